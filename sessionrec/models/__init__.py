"""The recommenders, one private module per family; re-exported by ``sessionrec``."""

from ._bprmf import BPRMFRecommender
from ._gru4rec import GRU4RecRecommender
from ._hrnn import HRNNRecommender
from ._neighbors import (
    ItemKNNRecommender,
    SKNNRecommender,
    STANRecommender,
    VSKNNRecommender,
)
from ._popularity import (
    PersonalPopularityRecommender,
    PopularityRecommender,
    SessionPopularityRecommender,
)
from ._prnn import ParallelRNNRecommender
from ._rules import MarkovRecommender, SequentialRulesRecommender

__all__ = [
    "BPRMFRecommender",
    "GRU4RecRecommender",
    "HRNNRecommender",
    "ItemKNNRecommender",
    "MarkovRecommender",
    "ParallelRNNRecommender",
    "SequentialRulesRecommender",
    "SKNNRecommender",
    "STANRecommender",
    "VSKNNRecommender",
    "PersonalPopularityRecommender",
    "PopularityRecommender",
    "SessionPopularityRecommender",
]
