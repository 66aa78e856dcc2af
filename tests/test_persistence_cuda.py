"""A GRU4Rec fitted on a CUDA GPU (committed fixtures) loads and predicts on the CPU.

The fixtures were written on an NVIDIA H100 by ``tests/data/make_cuda_fixture.py``; this
test runs where there is no GPU, as in CI (skorch tests persistence the same way).
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import pytest
import torch

from sessionrec import GRU4RecRecommender

from .data.make_cuda_fixture import fixture_data

DATA = Path(__file__).resolve().parent / "data"


def expected_top5():
    return {int(k): v for k, v in json.loads((DATA / "gru4rec_cuda_top5.json").read_text()
                                             ).items()}


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def check(model):
    _, test = fixture_data()
    assert model.device_ == torch.device("cpu")
    assert model.network_.out.device.type == "cpu"
    recs = model.predict_next(test, k=5)
    assert {int(s): [int(i) for i in row] for s, row in zip(recs.index, recs.to_numpy())
            } == expected_top5()


def test_joblib_pickle_from_cuda_loads_on_cpu(no_cuda):
    model = joblib.load(DATA / "gru4rec_cuda.joblib")
    assert model.get_params()["device"] == "cuda"  # the parameter is kept as given
    # Written before reset_after existed: the model ran the paper's GRU, and loads so.
    assert model.reset_after is False and model.network_.reset_after is False
    check(model)


def test_save_file_from_cuda_loads_on_cpu(no_cuda):
    check(GRU4RecRecommender.load(DATA / "gru4rec_cuda.pt"))
    check(GRU4RecRecommender.load(DATA / "gru4rec_cuda.pt", device="cpu"))
    with pytest.raises(ValueError, match="CUDA is not available"):
        GRU4RecRecommender.load(DATA / "gru4rec_cuda.pt", device="cuda")
