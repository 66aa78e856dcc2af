"""Readers of public session data formats."""

from __future__ import annotations

import pandas as pd

__all__ = ["read_gru4rec_tsv"]


def read_gru4rec_tsv(path, *, session_key="SessionId", item_key="ItemId",
                     time_key="Time") -> pd.DataFrame:
    """Read a file in the GRU4Rec layout: tab-separated, header ``SessionId ItemId Time``.

    This is the layout of the official GRU4Rec preprocessing and of the session-rec
    framework (e.g. ``yoochoose-clicks-100k_train_full.txt``). Times are unix seconds.

    Parameters
    ----------
    path : str or path-like
    session_key, item_key, time_key : str
        Names of the three columns in the file.

    Returns
    -------
    pandas.DataFrame
        Columns ``session_key`` and ``item_key`` as int64 and ``time_key`` as float64.
    """
    frame = pd.read_csv(path, sep="\t",
                        dtype={session_key: "int64", item_key: "int64", time_key: "float64"})
    missing = [c for c in (session_key, item_key, time_key) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path!s} lacks the column(s) {missing}; found {list(frame.columns)}.")
    return frame
