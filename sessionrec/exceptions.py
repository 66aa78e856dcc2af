"""Exceptions and warnings raised by sessionrec."""

from sklearn.exceptions import ConvergenceWarning, NotFittedError

__all__ = ["NotFittedError", "SessionCutWarning", "TrainingDivergedError",
           "TrainingDivergenceWarning"]


class TrainingDivergedError(ArithmeticError):
    """The training loss became NaN or infinite.

    Raised during ``fit`` (the estimator is then left unfitted). Lower the learning rate
    or the momentum, or use a loss with built-in score regularisation.
    """


class TrainingDivergenceWarning(ConvergenceWarning):
    """The training loss stayed finite but ended far above where it started.

    Warned at the end of ``fit`` (the model is fitted, but probably useless: for example
    ``learning_rate=1e30`` gives a finite loss of 1e30 and an MRR near 0). The message
    names the parameters to change. A subclass of scikit-learn's ``ConvergenceWarning``,
    so the filters a search already sets for it apply.
    """


class SessionCutWarning(UserWarning):
    """An evaluation frame holds the rest of sessions the model was trained on.

    A row-based split (an integer ``cv``, ``KFold``, ``learning_curve``,
    ``HalvingGridSearchCV``) puts the start of a session in training and its end in the
    test fold, which leaks the session into training and cuts its test part short. Use a
    splitter of :mod:`sessionrec.model_selection`, which keeps sessions whole.
    """
