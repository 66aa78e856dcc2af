"""The recommenders, one private module per family; re-exported by ``sessionrec``."""

from ._gru4rec import GRU4RecRecommender
from ._neighbors import ItemKNNRecommender
from ._popularity import PopularityRecommender, SessionPopularityRecommender

__all__ = [
    "GRU4RecRecommender",
    "ItemKNNRecommender",
    "PopularityRecommender",
    "SessionPopularityRecommender",
]
