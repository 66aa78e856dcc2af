"""Write the CUDA-trained model fixtures that test_persistence_cuda.py loads on a CPU.

Run on a machine with a CUDA GPU, from the repository root:
``python tests/data/make_cuda_fixture.py``. It writes, next to this file, a joblib pickle
and a ``save`` file of a small GRU4Rec fitted on CUDA, and the top-5 lists it gives there.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import torch

from sessionrec import GRU4RecRecommender
from sessionrec.datasets import make_sessions

HERE = Path(__file__).resolve().parent


def fixture_data():
    events = make_sessions(n_sessions=300, n_items=40, random_state=7)
    return events[events["SessionId"] < 250], events[events["SessionId"] >= 250]


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA device"
    train, test = fixture_data()
    model = GRU4RecRecommender(layers=(8,), n_epochs=2, n_sample=16, batch_size=16,
                               device="cuda", random_state=0).fit(train)
    joblib.dump(model, HERE / "gru4rec_cuda.joblib")
    model.save(HERE / "gru4rec_cuda.pt")
    recs = model.predict_next(test, k=5)
    expected = {str(s): [int(i) for i in row] for s, row in zip(recs.index, recs.to_numpy())}
    (HERE / "gru4rec_cuda_top5.json").write_text(json.dumps(expected, indent=0))
    print("wrote fixtures:", sorted(p.name for p in HERE.glob("gru4rec_cuda*")))


if __name__ == "__main__":
    main()
