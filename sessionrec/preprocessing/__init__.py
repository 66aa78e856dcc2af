"""Preprocessing of event frames as scikit-learn transformers.

Sessionising (:class:`SessionSplitter`), row filters (the papers' data preparation) and
item-feature encoders for feature-aware models. Filters drop rows; every transformer
returns a new frame and never modifies its input. See ``docs/tuning.md``.
"""

from ._features import DenseItemFeatures, ItemFeatures, TfidfItemFeatures
from ._filters import (
    ConsecutiveDuplicateFilter,
    ItemSupportFilter,
    RepeatUntilStable,
    SessionLengthFilter,
    UserSessionFilter,
)
from ._sessions import ConcatenateUserSessions, SessionSplitter, session_codes

__all__ = [
    "ConcatenateUserSessions",
    "ConsecutiveDuplicateFilter",
    "DenseItemFeatures",
    "ItemFeatures",
    "ItemSupportFilter",
    "RepeatUntilStable",
    "SessionLengthFilter",
    "SessionSplitter",
    "TfidfItemFeatures",
    "UserSessionFilter",
    "session_codes",
]
