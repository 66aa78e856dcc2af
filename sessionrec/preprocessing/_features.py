"""Item-feature encoders for feature-aware models (p-RNN): text to TF-IDF, dense vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize
from sklearn.utils.validation import check_is_fitted

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


class TfidfItemFeatures(TransformerMixin, BaseEstimator):
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

    Examples
    --------
    >>> import pandas as pd
    >>> movies = pd.DataFrame({"title": ["Toy Story", "Story of Toys"],
    ...                        "genres": ["Animation|Comedy", "Drama"]}, index=[1, 2])
    >>> f = TfidfItemFeatures(["title", "genres"]).fit_transform(movies)
    >>> f.labels.tolist(), f.is_sparse, f.n_features
    ([1, 2], True, 13)
    """

    def __init__(self, columns, *, item_key=None, vectorizer=None):
        self.columns = columns
        self.item_key = item_key
        self.vectorizer = vectorizer

    def _documents(self, X) -> tuple[pd.Index, pd.Series]:
        X, labels = _item_table(X, self.item_key)
        columns = [self.columns] if isinstance(self.columns, str) else list(self.columns)
        if not columns:
            raise ValueError("columns must name at least one text column.")
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
        _, docs = self._documents(X)
        base = self.vectorizer if self.vectorizer is not None else TfidfVectorizer(
            ngram_range=(1, 2), dtype=np.float32)
        if not isinstance(base, TfidfVectorizer):
            raise TypeError(f"vectorizer must be a TfidfVectorizer, got "
                            f"{type(base).__name__}.")
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
        ItemFeatures
            Sparse (CSR, float32), one row per distinct item in order of appearance.
        """
        check_is_fitted(self)
        labels, docs = self._documents(X)
        return ItemFeatures(labels, sp.csr_matrix(self.vectorizer_.transform(docs.to_numpy()),
                                                  dtype=np.float32))


class DenseItemFeatures(TransformerMixin, BaseEstimator):
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

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"x": [3.0, 0.0], "y": [4.0, 2.0]}, index=["a", "b"])
    >>> DenseItemFeatures().fit_transform(X).matrix.tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 1.0]]
    """

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
        self._matrix(X)
        return self

    def _matrix(self, X) -> tuple[pd.Index, np.ndarray]:
        if self.norm not in ("l2", None):
            raise ValueError(f"norm must be 'l2' or None, got {self.norm!r}.")
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
        return labels, matrix.astype(np.float32)

    def transform(self, X) -> ItemFeatures:
        """The (normalised) feature rows of the items of ``X``.

        Parameters
        ----------
        X : pandas.DataFrame

        Returns
        -------
        ItemFeatures
        """
        labels, matrix = self._matrix(X)
        return ItemFeatures(labels, matrix)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags
