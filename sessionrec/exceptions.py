"""Exceptions raised by sessionrec."""

from sklearn.exceptions import NotFittedError

__all__ = ["NotFittedError", "TrainingDivergedError"]


class TrainingDivergedError(ArithmeticError):
    """The training loss became NaN or infinite.

    Raised during ``fit`` (the estimator is then left unfitted). Lower the learning rate
    or the momentum, or use a loss with built-in score regularisation.
    """
