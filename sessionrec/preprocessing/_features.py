"""Item-feature encoders for feature-aware models (p-RNN): text to TF-IDF, dense vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted

from .._validation import COLUMN, Satisfies
from ._base import FrameTransformer

__all__ = ["DenseItemFeatures", "ItemFeatures", "TfidfItemFeatures"]


@dataclass(frozen=True)
class ItemFeatures:
    """A feature matrix with one row per item label.

    Parameters
    ----------
    labels : pandas.Index
        Item labels, unique; row ``i`` of ``matrix`` belongs to ``labels[i]``.
    matrix : ndarray or scipy.sparse.csr_matrix of shape (len(labels), n_features)
        float32 features; sparse matrices stay sparse.
    feature_names : pandas.Index or None, default=None
        The name of each feature (column), when known.

    Not a sequence or an array (no ``len``): scikit-learn passes it to a fit unchanged
    and never slices it by row in cross-validation, since its rows are items, not events.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> f = ItemFeatures(pd.Index(["a", "b"]), np.eye(2, dtype=np.float32))
    >>> matrix, known = f.align(pd.Index(["b", "z"]))
    >>> matrix.tolist(), known.tolist()
    ([[0.0, 1.0], [0.0, 0.0]], [True, False])
    """

    labels: pd.Index
    matrix: np.ndarray | sp.csr_matrix
    feature_names: pd.Index | None = None

    def __post_init__(self):
        labels = pd.Index(self.labels)
        if not labels.is_unique:
            raise ValueError("ItemFeatures labels must be unique.")
        if self.matrix.ndim != 2 or self.matrix.shape[0] != len(labels):
            raise ValueError(f"ItemFeatures matrix must have one row per label "
                             f"({len(labels)}); got shape {self.matrix.shape}.")
        matrix = (sp.csr_matrix(self.matrix, dtype=np.float32) if sp.issparse(self.matrix)
                  else np.asarray(self.matrix, dtype=np.float32))
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "matrix", matrix)
        if self.feature_names is not None:
            names = pd.Index(self.feature_names)
            if len(names) != matrix.shape[1]:
                raise ValueError(f"ItemFeatures has {matrix.shape[1]} features but "
                                 f"{len(names)} feature names.")
            object.__setattr__(self, "feature_names", names)

    def to_frame(self) -> pd.DataFrame:
        """The features as a DataFrame indexed by item label, one column per feature
        (sparse columns for a sparse matrix), as p-RNN also takes them."""
        columns = self.feature_names if self.feature_names is not None else None
        if self.is_sparse:
            return pd.DataFrame.sparse.from_spmatrix(self.matrix, index=self.labels,
                                                     columns=columns)
        return pd.DataFrame(self.matrix, index=self.labels, columns=columns)

    @property
    def n_features(self) -> int:
        return int(self.matrix.shape[1])

    @property
    def is_sparse(self) -> bool:
        return sp.issparse(self.matrix)

    def align(self, labels) -> tuple[np.ndarray | sp.csr_matrix, np.ndarray]:
        """Rows for ``labels`` in that order, zero rows for labels without features.

        Returns
        -------
        matrix : same kind as ``self.matrix``, shape (len(labels), n_features)
        known : ndarray of bool
            Which labels had features.
        """
        position = self.labels.get_indexer(pd.Index(labels))
        known = position >= 0
        if self.is_sparse:
            picked = self.matrix[np.where(known, position, 0)]
            matrix = sp.diags(known.astype(np.float32)) @ picked
            return sp.csr_matrix(matrix, dtype=np.float32), known
        matrix = np.zeros((len(position), self.n_features), dtype=np.float32)
        matrix[known] = self.matrix[position[known]]
        return matrix, known


def _item_table(X, item_key) -> tuple[pd.DataFrame, pd.Index]:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame of items, got {type(X).__name__}.")
    if item_key is None:
        return X, X.index
    if item_key not in X.columns:
        raise ValueError(f"column {item_key!r} (the item column) is missing from X; set "
                         "item_key, or None to use the index as item labels.")
    return X, pd.Index(X[item_key])


def _is_column_list(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, tuple))
                                                    for v in value)


class _ItemFeatureEncoder(FrameTransformer):
    """Base of the encoders: ``transform`` gives :class:`ItemFeatures`, or with
    ``set_output(transform="pandas")`` the same as a DataFrame indexed by item label
    (:meth:`ItemFeatures.to_frame`)."""

    def _output(self, features: ItemFeatures):
        return features.to_frame() if self._output_config() == "pandas" else features


class TfidfItemFeatures(_ItemFeatureEncoder):
    """TF-IDF of item texts (unigrams and bigrams by default), as sparse item features.

    The p-RNN paper represents item text as TF-IDF over unigrams and bigrams. The text
    columns are joined per row; several rows of the same item (e.g. one per tag) are
    joined into one document. The vectoriser is scikit-learn's ``TfidfVectorizer``.

    Parameters
    ----------
    columns : str or list of str
        Text columns. List-valued cells are joined; ``|``-separated values (MovieLens
        genres) are split into words by the default tokeniser.
    item_key : str or None, default=None
        Column of item labels; None: the index holds them.
    vectorizer : TfidfVectorizer or None, default=None
        A configured vectoriser (cloned); None means
        ``TfidfVectorizer(ngram_range=(1, 2), min_df=1, dtype=np.float32)``.

    Attributes
    ----------
    vectorizer_ : TfidfVectorizer
        The fitted clone.
    n_features_ : int
    feature_names_in_ : ndarray of object
        The columns of the frame ``fit`` saw.

    ``get_feature_names_out()`` gives the vocabulary's tokens (the columns of the
    output), and the features carry them (``ItemFeatures.feature_names``).

    Examples
    --------
    >>> import pandas as pd
    >>> movies = pd.DataFrame({"title": ["Toy Story", "Story of Toys"],
    ...                        "genres": ["Animation|Comedy", "Drama"]}, index=[1, 2])
    >>> f = TfidfItemFeatures(["title", "genres"]).fit_transform(movies)
    >>> f.labels.tolist(), f.is_sparse, f.n_features
    ([1, 2], True, 13)
    """

    _parameter_constraints: dict = {
        "columns": [str, Satisfies(lambda v: _is_column_list(v) and len(v) > 0,
                                   "a non-empty list of column names")],
        "item_key": [None, *COLUMN],
        "vectorizer": [None, TfidfVectorizer],
    }

    def __init__(self, columns, *, item_key=None, vectorizer=None):
        self.columns = columns
        self.item_key = item_key
        self.vectorizer = vectorizer

    def _documents(self, X) -> tuple[pd.Index, pd.Series]:
        X, labels = _item_table(X, self.item_key)
        columns = [self.columns] if isinstance(self.columns, str) else list(self.columns)
        missing = [c for c in columns if c not in X.columns]
        if missing:
            raise ValueError(f"text column(s) {missing} missing from X.")
        text = pd.Series("", index=range(len(X)), dtype=object)
        for column in columns:
            values = X[column].map(lambda v: " ".join(map(str, v))
                                   if isinstance(v, (list, tuple, set)) else v)
            text = text + " " + values.fillna("").astype(str).str.replace("|", " ").to_numpy()
        per_item = text.groupby(labels.to_numpy(), sort=False).agg(" ".join)
        return pd.Index(per_item.index), per_item

    def fit(self, X, y=None):
        """Learn the vocabulary and IDF weights from the item texts of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame
            One or more rows per item.
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._validate()
        _, docs = self._documents(X)
        self._remember_columns(X)
        base = self.vectorizer if self.vectorizer is not None else TfidfVectorizer(
            ngram_range=(1, 2), dtype=np.float32)
        self.vectorizer_ = clone(base).fit(docs.to_numpy())
        self.n_features_ = len(self.vectorizer_.vocabulary_)
        return self

    def transform(self, X) -> ItemFeatures:
        """TF-IDF rows of the items of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame

        Returns
        -------
        ItemFeatures or pandas.DataFrame
            Sparse (CSR, float32), one row per distinct item in order of appearance; with
            ``set_output(transform="pandas")`` a DataFrame of sparse columns, indexed by
            item label.
        """
        check_is_fitted(self)
        labels, docs = self._documents(X)
        matrix = sp.csr_matrix(self.vectorizer_.transform(docs.to_numpy()), dtype=np.float32)
        return self._output(ItemFeatures(labels, matrix, self.get_feature_names_out()))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The tokens of the vocabulary, in the order of the feature columns.

        Parameters
        ----------
        input_features : ignored
            Present for scikit-learn's API.

        Returns
        -------
        ndarray of object
        """
        check_is_fitted(self)
        return np.asarray(self.vectorizer_.get_feature_names_out(), dtype=object)


class DenseItemFeatures(_ItemFeatureEncoder):
    """Dense numeric item vectors (e.g. image embeddings), L2-normalised per item.

    The p-RNN paper feeds image feature vectors normalised to unit length. Stateless:
    ``fit`` only validates.

    Parameters
    ----------
    columns : list of str or None, default=None
        Numeric columns; None takes every numeric column (the item column excluded).
    item_key : str or None, default=None
        Column of item labels; None: the index holds them.
    norm : {"l2", None}, default="l2"
        Row normalisation; items whose vector is all zeros stay zero.

    Attributes
    ----------
    feature_columns_ : list
        The columns read (after ``fit``); ``get_feature_names_out()`` gives them.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"x": [3.0, 0.0], "y": [4.0, 2.0]}, index=["a", "b"])
    >>> DenseItemFeatures().fit_transform(X).matrix.tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 1.0]]
    """

    _parameter_constraints: dict = {
        "columns": [None, Satisfies(lambda v: _is_column_list(v) and len(v) > 0,
                                    "a non-empty list of column names")],
        "item_key": [None, *COLUMN],
        "norm": [StrOptions({"l2"}), None],
    }

    def __init__(self, columns=None, *, item_key=None, norm="l2"):
        self.columns = columns
        self.item_key = item_key
        self.norm = norm

    def fit(self, X, y=None):
        """Validate the parameters and columns.

        Parameters
        ----------
        X : pandas.DataFrame
        y : None
            Ignored.

        Returns
        -------
        self
        """
        self._validate()
        _, _, self.feature_columns_ = self._matrix(X)
        self._remember_columns(X)
        return self

    def _matrix(self, X) -> tuple[pd.Index, np.ndarray, list]:
        X, labels = _item_table(X, self.item_key)
        if self.columns is None:
            data = X.drop(columns=[self.item_key] if self.item_key is not None else [])
            data = data.select_dtypes("number")
        else:
            missing = [c for c in self.columns if c not in X.columns]
            if missing:
                raise ValueError(f"feature column(s) {missing} missing from X.")
            data = X[list(self.columns)]
        if data.shape[1] == 0:
            raise ValueError("no numeric feature columns in X.")
        matrix = data.to_numpy(dtype=np.float64)
        if not np.isfinite(matrix).all():
            raise ValueError("item features contain NaN or infinite values.")
        if not labels.is_unique:
            raise ValueError("each item must appear once in X (duplicate item labels).")
        if self.norm == "l2":
            matrix = normalize(matrix, norm="l2")
        return labels, matrix.astype(np.float32), list(data.columns)

    def transform(self, X) -> ItemFeatures:
        """The (normalised) feature rows of the items of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame

        Returns
        -------
        ItemFeatures or pandas.DataFrame
            With ``set_output(transform="pandas")``, a DataFrame indexed by item label.
        """
        self._validate()  # stateless: transform needs no fit
        labels, matrix, columns = self._matrix(X)
        return self._output(ItemFeatures(labels, matrix, pd.Index(columns)))

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """The feature columns read (those of the frame ``fit`` saw).

        Parameters
        ----------
        input_features : ignored
            Present for scikit-learn's API.

        Returns
        -------
        ndarray of object
        """
        check_is_fitted(self, "feature_columns_")
        return np.asarray(self.feature_columns_, dtype=object)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
