"""Readers of public data formats and a synthetic generator with planted structure."""

from ._readers import read_gru4rec_tsv
from ._synthetic import make_sessions

__all__ = ["make_sessions", "read_gru4rec_tsv"]
