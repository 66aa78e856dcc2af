"""Where the examples find data (../shared/data, else synthetic events), and the data
preparations they share.

Every example takes ``--smoke``: the same code paths on less data and fewer epochs, so
that the test suite runs each example end to end in seconds (``tests/test_examples.py``).
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from sessionrec.datasets import (
    make_sessions,
    read_gru4rec_tsv,
    read_movielens_movies,
    read_movielens_ratings,
    read_movielens_tags,
)
from sessionrec.model_selection import LastSessionSplit, train_test_split
from sessionrec.preprocessing import (
    DenseItemFeatures,
    ItemSupportFilter,
    RepeatUntilStable,
    SessionLengthFilter,
    SessionSplitter,
    TfidfItemFeatures,
    UserSessionFilter,
)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SESSIONREC_SHARED_DATA", REPO.parent / "shared" / "data"))
MOVIELENS = SHARED_DATA / "ml-latest-small"
MOVIELENS_FILES = ("ratings.csv", "movies.csv", "tags.csv")

# In smoke runs: sessions kept of a data set (the earliest ones), and epochs of training.
SMOKE_SESSIONS = 1500
SMOKE_EPOCHS = 1


def add_smoke_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``--smoke`` switch every example shares."""
    parser.add_argument("--smoke", action="store_true",
                        help=f"a quick run of the same code on {SMOKE_SESSIONS:,} sessions of "
                             f"each data set and {SMOKE_EPOCHS} epoch(s) "
                             "(what the test suite runs)")
    return parser


def smoke_sessions(events: pd.DataFrame, n_sessions: int = SMOKE_SESSIONS) -> pd.DataFrame:
    """The events of ``n_sessions`` sessions spread evenly over the time the data span
    (so that time-based splits still find their days), for a smoke run; with users, only
    those left with two or more sessions (one to train, one to test)."""
    starts = events.groupby("SessionId")["Time"].min().sort_values(kind="stable")
    picked = np.unique(np.linspace(0, len(starts) - 1, min(n_sessions, len(starts))
                                   ).astype(np.int64))
    events = events[events["SessionId"].isin(starts.index[picked])]
    if "UserId" in events:
        events = events[events.groupby("UserId")["SessionId"].transform("nunique") >= 2]
    return events


def rsc15_or_synthetic(random_state: int = 0, smoke: bool = False):
    """(name, train, test): rsc15-100k train_full/test when present, else synthetic data."""
    folder = SHARED_DATA / "rsc15-100k"
    if folder.is_dir():
        name = "rsc15-100k"
        train = read_gru4rec_tsv(folder / "yoochoose-clicks-100k_train_full.txt")
        test = read_gru4rec_tsv(folder / "yoochoose-clicks-100k_test.txt")
    else:
        name = "make_sessions(20000 sessions, 2000 items)"
        events = make_sessions(n_sessions=20000, n_items=2000, random_state=random_state)
        last = events.groupby("SessionId")["Time"].transform("max")
        cut = last.quantile(0.85)
        train, test = events[last <= cut], events[last > cut]
    if smoke:
        name += f", {SMOKE_SESSIONS:,} of its sessions (smoke run)"
        train, test = smoke_sessions(train), smoke_sessions(test, SMOKE_SESSIONS // 5)
    return name, train, test


def hrnn_preparation(ratings: pd.DataFrame) -> tuple[pd.DataFrame, RepeatUntilStable]:
    """The HRNN paper's preparation, as transformers: 30-minute sessions, then items with
    >= 5 events, sessions with >= 3 events and users with >= 5 sessions, until stable."""
    sessions = SessionSplitter(idle_gap=30 * 60).fit_transform(ratings)
    filters = RepeatUntilStable(Pipeline([("items", ItemSupportFilter(5)),
                                          ("sessions", SessionLengthFilter(3)),
                                          ("users", UserSessionFilter(5))]))
    return filters.fit_transform(sessions), filters


def movielens_features(folder: Path) -> dict:
    """p-RNN's item features of MovieLens: TF-IDF (unigrams + bigrams) of title + genres
    + tags (sparse), and the L2-normalised genre indicator vector (dense)."""
    movies = read_movielens_movies(folder / "movies.csv")
    tags = read_movielens_tags(folder / "tags.csv")
    tag_text = tags.groupby("ItemId")["Tag"].agg(" ".join)
    text = movies.assign(tags=tag_text.reindex(movies.index).fillna(""))
    tfidf = TfidfItemFeatures(["title", "genres", "tags"]).fit_transform(text)
    genres = movies["genres"].str.get_dummies(sep="|")
    genre = DenseItemFeatures().fit_transform(genres.astype(np.float32))
    return {"text": tfidf, "genre": genre}


def movielens_or_synthetic(random_state: int = 0, smoke: bool = False):
    """(name, train, test, item features) of user data, each user's last session to test.

    ml-latest-small prepared as the HRNN paper (:func:`hrnn_preparation`) with its text
    and genre features (:func:`movielens_features`) when present, else ``make_sessions``
    with users who persist across sessions and noisy topic features.
    """
    if _has_movielens():
        name = "ml-latest-small (HRNN preparation)"
        events, _ = hrnn_preparation(read_movielens_ratings(MOVIELENS / "ratings.csv"))
        features = movielens_features(MOVIELENS)
    else:
        name = "make_sessions(6000 sessions, 300 users, 1000 items)"
        events, topics = make_sessions(n_sessions=6000, n_items=1000, n_users=300,
                                       user_strength=0.5, return_item_features=True,
                                       random_state=random_state)
        features = {"topic": topics}
    if smoke:
        name += f", {SMOKE_SESSIONS:,} of its sessions (smoke run)"
        events = smoke_sessions(events)
    train, test = train_test_split(events, splitter=LastSessionSplit())
    return name, train, test, features


def _has_movielens() -> bool:
    return all((MOVIELENS / name).is_file() for name in MOVIELENS_FILES)


def require_movielens() -> Path:
    """The MovieLens folder, or exit with a message saying where it was looked for."""
    if not _has_movielens():
        raise SystemExit(f"MovieLens ({', '.join(MOVIELENS_FILES)}) not found at "
                         f"{MOVIELENS}; set SESSIONREC_SHARED_DATA to the folder that holds "
                         "ml-latest-small.")
    return MOVIELENS


def needs_users(cls) -> bool:
    """Whether a recommender class reads a user column (rsc15 has none)."""
    return "user_key" in inspect.signature(cls.__init__).parameters
