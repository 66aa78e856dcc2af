"""The recommenders, one private module per family; re-exported by ``sessionrec``."""

from ._popularity import PopularityRecommender, SessionPopularityRecommender

__all__ = ["PopularityRecommender", "SessionPopularityRecommender"]
