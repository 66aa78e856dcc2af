"""What sessionrec's transformers share: frames in, frames out, scikit-learn's output API.

Every transformer of :mod:`sessionrec.preprocessing` takes a pandas DataFrame and
returns a new one (or, for the item-feature encoders, an
:class:`~sessionrec.preprocessing.ItemFeatures`). scikit-learn's automatic output
wrapping (``set_output``) assumes one output row per input row with the columns renamed
to ``get_feature_names_out()``; filters drop rows and a test frame may carry other
columns than the training frame, so that wrapping is turned off here and
:meth:`FrameTransformer.set_output` is implemented directly: ``"pandas"`` and
``"default"`` both give the pandas frame the transformer builds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from .._validation import validate_constraints

__all__ = ["FrameTransformer", "check_frame"]

_OUTPUTS = (None, "default", "pandas")


def check_frame(X) -> pd.DataFrame:
    """``X`` if it is a DataFrame, else a ``TypeError``."""
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame of events, got {type(X).__name__}.")
    return X


class FrameTransformer(TransformerMixin, BaseEstimator, auto_wrap_output_keys=None):
    """Base of the transformers on frames: parameter checks, feature names, ``set_output``.

    A subclass declares ``_parameter_constraints``, may add ``_check_params`` (rules
    between parameters) and says which columns its output has
    (:meth:`_columns_out`, by default the input's).
    """

    _parameter_constraints: dict = {}

    def _check_params(self) -> None:
        """Rules that tie parameters together; raise ``InvalidParameterError``."""

    def _validate(self) -> None:
        validate_constraints(self)
        self._check_params()

    def _remember_columns(self, X: pd.DataFrame) -> None:
        """Record the training frame's columns, as scikit-learn's ``feature_names_in_``."""
        self.feature_names_in_ = np.asarray(X.columns, dtype=object)
        self.n_features_in_ = len(self.feature_names_in_)

    def _columns_out(self, columns: list) -> list:
        """The columns of the output for input ``columns``."""
        return list(columns)

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Names of the output columns.

        Parameters
        ----------
        input_features : array-like of str or None, default=None
            The input frame's columns; None means those of the frame ``fit`` saw.

        Returns
        -------
        ndarray of object
        """
        if input_features is None:
            if not hasattr(self, "feature_names_in_"):
                raise NotFittedError(f"{type(self).__name__} has not seen a frame: fit it, "
                                     "or pass input_features.")
            input_features = self.feature_names_in_
        return np.asarray(self._columns_out(list(input_features)), dtype=object)

    def set_output(self, *, transform=None):
        """Choose the output container, as scikit-learn's transformers do.

        Parameters
        ----------
        transform : {"default", "pandas"} or None, default=None
            Both give a pandas DataFrame, the container these transformers work in
            (None leaves the choice unchanged). Other containers (``"polars"``) are
            refused.

        Returns
        -------
        self
        """
        if transform not in _OUTPUTS:
            raise InvalidParameterError(
                f"{type(self).__name__}.set_output: transform must be 'default', 'pandas' "
                f"or None; got {transform!r} (sessionrec's transformers work in pandas).")
        if transform is not None:
            self._sklearn_output_config = {"transform": transform}
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = False
        tags.input_tags.two_d_array = False  # a DataFrame of events or items, not an array
        tags.input_tags.string = True
        tags.input_tags.categorical = True
        return tags

    def _output_config(self) -> str:
        return getattr(self, "_sklearn_output_config", {}).get("transform", "default")
