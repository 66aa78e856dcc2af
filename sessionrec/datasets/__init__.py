"""Readers of public data formats and a synthetic generator with planted structure."""

from ._readers import (
    read_diginetica_views,
    read_gru4rec_tsv,
    read_lastfm_1k,
    read_movielens_movies,
    read_movielens_ratings,
    read_movielens_tags,
    read_retailrocket_events,
    read_yoochoose_clicks,
)
from ._synthetic import make_sessions

__all__ = ["make_sessions", "read_diginetica_views", "read_gru4rec_tsv", "read_lastfm_1k",
           "read_movielens_movies", "read_movielens_ratings", "read_movielens_tags",
           "read_retailrocket_events", "read_yoochoose_clicks"]
