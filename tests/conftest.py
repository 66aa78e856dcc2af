"""Shared fixtures: small synthetic events, and the real data in ../shared/data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import settings

from sessionrec.datasets import make_sessions, read_gru4rec_tsv

settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=60, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SESSIONREC_SHARED_DATA", REPO.parent / "shared" / "data"))
RSC15 = SHARED_DATA / "rsc15-100k"


@pytest.fixture(autouse=True)
def _fixed_seeds():
    np.random.seed(0)  # noqa: NPY002 - pins the legacy global state for any code using it
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def events() -> pd.DataFrame:
    """A small synthetic data set: 300 sessions over 60 items, 30 users of 10 sessions.

    Users are assigned round-robin, so every user has sessions in train and in test.
    """
    events = make_sessions(n_sessions=300, n_items=60, random_state=0)
    return events.assign(UserId=events["SessionId"] % 30)


@pytest.fixture(scope="session")
def train_test(events) -> tuple[pd.DataFrame, pd.DataFrame]:
    cut = events["SessionId"] < 240
    return events[cut].reset_index(drop=True), events[~cut].reset_index(drop=True)


@pytest.fixture(scope="session")
def rsc15() -> tuple[pd.DataFrame, pd.DataFrame]:
    """rsc15-100k train_full and test, from ../shared/data."""
    if not RSC15.is_dir():
        pytest.skip(f"real data not found at {RSC15}")
    return (read_gru4rec_tsv(RSC15 / "yoochoose-clicks-100k_train_full.txt"),
            read_gru4rec_tsv(RSC15 / "yoochoose-clicks-100k_test.txt"))


@pytest.fixture
def init_seeds(monkeypatch):
    """``record(network_class)`` makes every ``reset_parameters`` call of that class note
    the seed of the generator it initialises from, in the list it returns."""

    def record(network_class) -> list[int]:
        seeds = []
        reset = network_class.reset_parameters

        def recording(self, generator=None):
            seeds.append(generator.initial_seed())
            reset(self, generator)

        monkeypatch.setattr(network_class, "reset_parameters", recording)
        return seeds

    return record


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for test servers and clusters)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
