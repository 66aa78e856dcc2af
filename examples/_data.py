"""Where the examples and benchmarks find data: ../shared/data, else synthetic events."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from sessionrec.datasets import make_sessions, read_gru4rec_tsv

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SESSIONREC_SHARED_DATA", REPO.parent / "shared" / "data"))


def rsc15_or_synthetic(random_state: int = 0):
    """(name, train, test): rsc15-100k train_full/test when present, else synthetic data."""
    folder = SHARED_DATA / "rsc15-100k"
    if folder.is_dir():
        return ("rsc15-100k",
                read_gru4rec_tsv(folder / "yoochoose-clicks-100k_train_full.txt"),
                read_gru4rec_tsv(folder / "yoochoose-clicks-100k_test.txt"))
    events = make_sessions(n_sessions=20000, n_items=2000, random_state=random_state)
    cut = events.groupby("SessionId")["Time"].transform("max").quantile(0.85)
    last = events.groupby("SessionId")["Time"].transform("max")
    return "make_sessions(20000 sessions, 2000 items)", events[last <= cut], events[last > cut]


def needs_users(cls) -> bool:
    """Whether a recommender class reads a user column (rsc15 has none)."""
    return "user_key" in inspect.signature(cls.__init__).parameters
