"""Explicit save/load: format checks and error paths (round trips are in test_common)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sessionrec import PopularityRecommender, SessionPopularityRecommender, SessionRecommender


def test_load_through_the_base_class(train_test, tmp_path):
    est = SessionPopularityRecommender(device="cpu").fit(train_test[0])
    est.save(tmp_path / "m.pt")
    loaded = SessionRecommender.load(tmp_path / "m.pt")
    assert isinstance(loaded, SessionPopularityRecommender)


def test_load_wrong_class_or_file(train_test, tmp_path):
    est = SessionPopularityRecommender(device="cpu").fit(train_test[0])
    est.save(tmp_path / "m.pt")
    with pytest.raises(TypeError, match="not a PopularityRecommender"):
        PopularityRecommender.load(tmp_path / "m.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a sessionrec model"):
        SessionRecommender.load(tmp_path / "other.pt")


def test_save_needs_a_fitted_model_and_plain_values(train_test, tmp_path):
    from sessionrec import NotFittedError

    with pytest.raises(NotFittedError):
        PopularityRecommender().save(tmp_path / "m.pt")
    frame = train_test[0].assign(ItemId=[(i, i) for i in train_test[0]["ItemId"]])
    est = PopularityRecommender(device="cpu").fit(frame)
    with pytest.raises(TypeError, match="item labels"):
        est.save(tmp_path / "m.pt")


def test_saved_file_loads_with_weights_only(train_test, tmp_path):
    est = PopularityRecommender(device="cpu").fit(train_test[0])
    est.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["class"] == "PopularityRecommender"
    assert np.array_equal(payload["item_support"].numpy(), est.item_index_.support)


def test_pickle_does_not_touch_the_live_model(train_test):
    est = PopularityRecommender(device="cpu").fit(train_test[0])
    state = est.__getstate__()
    state["popularity_"] = None
    assert est.popularity_ is not None


@pytest.mark.parametrize("old, new, name", [
    ("sessionrec.nn._network", "sessionrec.nn._gru4rec_network", "GRU4RecNetwork"),
    ("sessionrec.nn._hierarchical", "sessionrec.nn._hrnn_network", "HRNNNetwork"),
    ("sessionrec.nn._parallel", "sessionrec.nn._prnn_network", "ParallelNetwork"),
])
def test_pickles_that_name_the_old_network_modules_still_load(old, new, name):
    """Models pickled before the network modules were renamed name the old modules;
    pickle finds their classes under those names (the committed CUDA fixture is one)."""
    import importlib
    import io
    import pickle

    found = pickle.Unpickler(io.BytesIO(b"")).find_class(old, name)
    assert found is getattr(importlib.import_module(new), name)
