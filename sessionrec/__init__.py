"""sessionrec: session-based recommenders with a scikit-learn API.

Every recommender takes a pandas DataFrame of events (session, item, time and, for
personalised models, user columns) and offers ``fit``, ``predict_next``, ``predict``,
``rank_next_items`` and ``score``. See the README and ``docs/`` for the user guide.
"""

from ._base import SessionRecommender, all_estimators
from .exceptions import (
    NotFittedError,
    SessionCutWarning,
    TrainingDivergedError,
    TrainingDivergenceWarning,
)
from .models import (
    BPRMFRecommender,
    GRU4RecRecommender,
    HRNNRecommender,
    ItemKNNRecommender,
    MarkovRecommender,
    ParallelRNNRecommender,
    PersonalPopularityRecommender,
    PopularityRecommender,
    SequentialRulesRecommender,
    SessionPopularityRecommender,
    SKNNRecommender,
    STANRecommender,
    VSKNNRecommender,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "SessionRecommender",
    "BPRMFRecommender",
    "GRU4RecRecommender",
    "HRNNRecommender",
    "ParallelRNNRecommender",
    "ItemKNNRecommender",
    "MarkovRecommender",
    "SequentialRulesRecommender",
    "SKNNRecommender",
    "STANRecommender",
    "VSKNNRecommender",
    "PersonalPopularityRecommender",
    "PopularityRecommender",
    "SessionPopularityRecommender",
    "NotFittedError",
    "SessionCutWarning",
    "TrainingDivergedError",
    "TrainingDivergenceWarning",
    "all_estimators",
    "__version__",
]
