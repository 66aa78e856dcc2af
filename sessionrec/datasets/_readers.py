"""Readers of public session data formats."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["read_diginetica_views", "read_gru4rec_tsv", "read_lastfm_1k",
           "read_movielens_movies", "read_movielens_ratings", "read_movielens_tags",
           "read_retailrocket_events", "read_yoochoose_clicks"]


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


def _iso_seconds(values: pd.Series) -> np.ndarray:
    """ISO-8601 timestamps (with or without a trailing Z) as float unix seconds (UTC)."""
    times = pd.to_datetime(values, utc=True, format="ISO8601")
    return ((times - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(np.float64)


def read_yoochoose_clicks(path, *, nrows=None) -> pd.DataFrame:
    """Read YOOCHOOSE clicks (``yoochoose-clicks.dat``, RecSys Challenge 2015).

    The file has no header; its columns are session, ISO-8601 timestamp, item and
    category. GRU4Rec's preparation of RSC15 starts from this file.

    Parameters
    ----------
    path : str or path-like
    nrows : int or None, default=None
        Read only the first ``nrows`` lines.

    Returns
    -------
    pandas.DataFrame
        ``SessionId`` (int64), ``ItemId`` (int64), ``Time`` (float64 unix seconds, UTC),
        ``Category`` (str: ``"S"`` special offer, ``"0"`` unknown, a category number or a
        brand id).
    """
    frame = pd.read_csv(path, header=None, names=["SessionId", "TimeStr", "ItemId", "Category"],
                        dtype={"SessionId": "int64", "TimeStr": str, "ItemId": "int64",
                               "Category": str}, nrows=nrows)
    frame["Time"] = _iso_seconds(frame.pop("TimeStr"))
    return frame[["SessionId", "ItemId", "Time", "Category"]]


def read_diginetica_views(path, *, nrows=None) -> pd.DataFrame:
    r"""Read Diginetica ``train-item-views.csv`` (CIKM Cup 2016).

    Semicolon-separated with a header: ``sessionId;userId;itemId;timeframe;eventdate`` in
    the CIKM Cup release, ``session_id;user_id;item_id;timeframe;eventdate`` in the widely
    used public sample (both are read). ``eventdate`` is the day and ``timeframe`` the
    milliseconds since the session began; the event time is their sum, as in the
    session-rec preparation.

    Parameters
    ----------
    path : str or path-like
    nrows : int or None, default=None

    Returns
    -------
    pandas.DataFrame
        ``SessionId`` (int64), ``UserId`` (nullable Int64: most sessions are anonymous),
        ``ItemId`` (int64), ``Time`` (float64 unix seconds).

    Examples
    --------
    >>> import io
    >>> sample = io.StringIO("session_id;user_id;item_id;timeframe;eventdate\n"
    ...                      "1;NA;81766;526309;2016-05-09\n")
    >>> read_diginetica_views(sample)
       SessionId  UserId  ItemId          Time
    0          1    <NA>   81766  1.462752e+09
    """
    header = pd.read_csv(path, sep=";", nrows=0).columns
    if hasattr(path, "seek"):
        path.seek(0)
    # Either spelling of the header, read as the CIKM Cup's camel case.
    names = {name: _DIGINETICA_COLUMNS.get(name, name) for name in header}
    missing = sorted(set(_DIGINETICA_COLUMNS.values()) - set(names.values()))
    if missing:
        raise ValueError(f"{path!s} is not a Diginetica views file: it lacks the column(s) "
                         f"{missing} (or their snake_case spellings); found {list(header)}.")
    dtypes = {"sessionId": "int64", "userId": "Int64", "itemId": "int64",
              "timeframe": "int64", "eventdate": str}
    frame = pd.read_csv(path, sep=";", nrows=nrows,
                        dtype={raw: dtypes[name] for raw, name in names.items()
                               if name in dtypes}).rename(columns=names)
    day = pd.to_datetime(frame["eventdate"], format="%Y-%m-%d")
    seconds = ((day - pd.Timestamp(0)) / pd.Timedelta(seconds=1)).to_numpy(np.float64)
    return pd.DataFrame({"SessionId": frame["sessionId"], "UserId": frame["userId"],
                         "ItemId": frame["itemId"],
                         "Time": seconds + frame["timeframe"].to_numpy() / 1000.0})


# The public sample's snake_case header -> the CIKM Cup release's names.
_DIGINETICA_COLUMNS = {"session_id": "sessionId", "user_id": "userId", "item_id": "itemId",
                       "sessionId": "sessionId", "userId": "userId", "itemId": "itemId",
                       "timeframe": "timeframe", "eventdate": "eventdate"}


def read_retailrocket_events(path, *, event_types=None, nrows=None) -> pd.DataFrame:
    """Read RetailRocket ``events.csv`` (visitor events, no sessions).

    Columns ``timestamp,visitorid,event,itemid,transactionid``; timestamps in
    milliseconds. There are no sessions: sessionise with
    :class:`~sessionrec.preprocessing.SessionSplitter` (visitors are the users).

    Parameters
    ----------
    path : str or path-like
    event_types : list of str or None, default=None
        Keep only these events (``"view"``, ``"addtocart"``, ``"transaction"``).
    nrows : int or None, default=None

    Returns
    -------
    pandas.DataFrame
        ``UserId`` (int64), ``ItemId`` (int64), ``Time`` (float64 unix seconds),
        ``Event`` (str), ``TransactionId`` (nullable Int64).
    """
    frame = pd.read_csv(path, nrows=nrows,
                        dtype={"timestamp": "int64", "visitorid": "int64", "event": str,
                               "itemid": "int64", "transactionid": "Int64"})
    out = pd.DataFrame({"UserId": frame["visitorid"], "ItemId": frame["itemid"],
                        "Time": frame["timestamp"].to_numpy() / 1000.0,
                        "Event": frame["event"], "TransactionId": frame["transactionid"]})
    if event_types is not None:
        out = out[out["Event"].isin(list(event_types))].reset_index(drop=True)
    return out


def _movielens_table(path, names, dat_names, dtypes):
    path = Path(path)
    if path.suffix == ".dat":  # ML-1M / ML-10M: "::"-separated, no header, Latin-1
        return pd.read_csv(path, sep="::", engine="python", header=None, names=dat_names,
                           encoding="latin-1").rename(columns=dict(zip(dat_names, names)))
    return pd.read_csv(path, dtype=dtypes).rename(columns=dict(zip(dat_names, names)))


def read_movielens_ratings(path) -> pd.DataFrame:
    """Read MovieLens ratings: ``ratings.csv`` (latest, 20M, 25M) or ``ratings.dat`` (1M, 10M).

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    pandas.DataFrame
        ``UserId`` (int64), ``ItemId`` (int64, the movie id), ``Rating`` (float64),
        ``Time`` (int64 unix seconds). Sessionise with
        :class:`~sessionrec.preprocessing.SessionSplitter`.
    """
    names = ["UserId", "ItemId", "Rating", "Time"]
    frame = _movielens_table(path, names, ["userId", "movieId", "rating", "timestamp"],
                             {"userId": "int64", "movieId": "int64", "rating": "float64",
                              "timestamp": "int64"})
    return frame.astype({"UserId": "int64", "ItemId": "int64", "Rating": "float64",
                         "Time": "int64"})[names]


def read_movielens_movies(path) -> pd.DataFrame:
    """Read MovieLens movies: ``movies.csv`` or ``movies.dat``.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    pandas.DataFrame
        Indexed by ``ItemId`` (the movie id): ``title`` (str), ``genres`` (str,
        ``|``-separated; ``"(no genres listed)"`` becomes empty), ``year`` (nullable
        Int64, parsed from the title).
    """
    frame = _movielens_table(path, ["ItemId", "title", "genres"],
                             ["movieId", "title", "genres"], {"movieId": "int64"})
    frame["genres"] = frame["genres"].replace("(no genres listed)", "").fillna("")
    frame["year"] = pd.to_numeric(frame["title"].str.extract(r"\((\d{4})\)\s*$")[0],
                                  errors="coerce").astype("Int64")
    return frame.set_index("ItemId")


def read_movielens_tags(path) -> pd.DataFrame:
    """Read MovieLens tags: ``tags.csv`` or ``tags.dat``.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    pandas.DataFrame
        ``UserId`` (int64), ``ItemId`` (int64), ``Tag`` (str), ``Time`` (int64 unix
        seconds).
    """
    names = ["UserId", "ItemId", "Tag", "Time"]
    frame = _movielens_table(path, names, ["userId", "movieId", "tag", "timestamp"],
                             {"userId": "int64", "movieId": "int64", "tag": str,
                              "timestamp": "int64"})
    return frame[names]


def read_lastfm_1k(path, *, item="track", nrows=None) -> pd.DataFrame:
    """Read Last.fm 1K listening events (``userid-timestamp-artid-artname-traid-traname.tsv``).

    Tab-separated, no header: user, ISO-8601 time, artist MBID, artist name, track MBID,
    track name. Names contain quotes, so no quoting is assumed; lines with a wrong number
    of fields (a handful in the public file) are skipped.

    Parameters
    ----------
    path : str or path-like
    item : {"track", "artist"}, default="track"
        What ``ItemId`` identifies: the track (its MBID, else ``"artist - track"``) or
        the artist (its MBID, else the artist name).
    nrows : int or None, default=None

    Returns
    -------
    pandas.DataFrame
        ``UserId`` (str), ``ItemId`` (str), ``Time`` (float64 unix seconds), ``Artist``,
        ``Track``. Sessionise with :class:`~sessionrec.preprocessing.SessionSplitter`.
    """
    if item not in ("track", "artist"):
        raise ValueError(f"item must be 'track' or 'artist', got {item!r}.")
    names = ["UserId", "TimeStr", "ArtistId", "Artist", "TrackId", "Track"]
    frame = pd.read_csv(path, sep="\t", header=None, names=names, quoting=csv.QUOTE_NONE,
                        dtype=str, on_bad_lines="skip", nrows=nrows, keep_default_na=False)
    if item == "track":
        fallback = frame["Artist"] + " - " + frame["Track"]
        ids = frame["TrackId"].where(frame["TrackId"] != "", fallback)
    else:
        ids = frame["ArtistId"].where(frame["ArtistId"] != "", frame["Artist"])
    return pd.DataFrame({"UserId": frame["UserId"], "ItemId": ids,
                         "Time": _iso_seconds(frame["TimeStr"]), "Artist": frame["Artist"],
                         "Track": frame["Track"]})
