"""p-RNN: parallel GRU subnets over item IDs and item features (Hidasi et al., RecSys 2016)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import replace
from numbers import Integral, Real

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from .._base import SessionRecommender
from .._batching import session_parallel_schedule
from .._events import ItemIndex, SessionEvents
from .._training import Trainer, hold_out_last_sessions
from .._validation import DROPOUT, Satisfies
from ..callbacks import Callback
from ..nn._losses import StepConfig
from ..nn._prnn_network import ParallelNetwork, SubnetSpec
from ..preprocessing._features import ItemFeatures
from ._epochs import document_epochs, mrr_of_score_blocks
from ._recurrent import SampledTrainingMixin, TrainingRun

__all__ = ["ParallelRNNRecommender"]

ARCHITECTURES = ("id", "feature", "concat", "parallel", "shared_w", "interaction")
TRAININGS = ("simultaneous", "alternating", "residual", "interleaving")
_HEAD = {"id": "sum", "feature": "sum", "concat": "sum", "parallel": "sum",
         "shared_w": "shared", "interaction": "interaction"}


def _positive_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def _finite_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)


def _mapping_of(value, test) -> bool:
    """Whether ``value`` is a dict from subnet names (strings) to values passing ``test``."""
    return isinstance(value, Mapping) and all(
        isinstance(name, str) and test(v) for name, v in value.items())


def _as_item_features(value, what: str) -> ItemFeatures:
    """One feature set given as ItemFeatures, a DataFrame or a (labels, matrix) pair."""
    if isinstance(value, ItemFeatures):
        features = value
    elif isinstance(value, pd.DataFrame):
        non_numeric = [c for c in value.columns
                       if not pd.api.types.is_numeric_dtype(value[c])
                       or pd.api.types.is_bool_dtype(value[c])]
        if non_numeric:
            raise TypeError(f"{what} must have numeric columns only; "
                            f"{non_numeric[:3]} are not numeric.")
        if len(value.columns) and all(isinstance(d, pd.SparseDtype) for d in value.dtypes):
            # Sparse columns (e.g. TfidfItemFeatures with set_output("pandas")) stay sparse.
            matrix = sp.csr_matrix(value.sparse.to_coo(), dtype=np.float32)
        else:
            matrix = value.to_numpy(dtype=np.float32)
        features = ItemFeatures(value.index, matrix)
    elif isinstance(value, tuple) and len(value) == 2:
        labels, matrix = value
        if not (sp.issparse(matrix) or isinstance(matrix, np.ndarray)):
            raise TypeError(f"{what}: the matrix of a (labels, matrix) pair must be a "
                            f"numpy array or a scipy sparse matrix; got {type(matrix)}.")
        try:
            features = ItemFeatures(pd.Index(labels), matrix)
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None
    else:
        raise TypeError(f"{what} must be an ItemFeatures, a DataFrame indexed by item label "
                        f"or a (labels, matrix) pair; got {type(value).__name__}.")
    if features.n_features == 0:
        raise ValueError(f"{what} has no feature columns.")
    values = features.matrix.data if features.is_sparse else features.matrix
    if not np.isfinite(values).all():
        raise ValueError(f"{what} contains NaN or infinite values.")
    return features


def _feature_sets(item_features) -> dict[str, ItemFeatures]:
    """``item_features`` as an ordered {name: ItemFeatures}."""
    if item_features is None:
        return {}
    if not isinstance(item_features, Mapping):
        return {"features": _as_item_features(item_features, "item_features")}
    if not item_features:
        raise ValueError("item_features is an empty mapping; pass None for no features.")
    found = {}
    for name, value in item_features.items():
        if not isinstance(name, str) or not name or name in ("id", "features", "concat"):
            raise ValueError(f"item_features keys must be non-empty strings other than "
                             f"'id', 'features' and 'concat'; got {name!r}.")
        found[name] = _as_item_features(value, f"item_features[{name!r}]")
    return found


@document_epochs
class ParallelRNNRecommender(SampledTrainingMixin, SessionRecommender):
    """p-RNN: session GRUs over item IDs and item features, merged to score items.

    The parallel RNNs of Hidasi et al. (RecSys 2016). Items often come with text and
    images; a p-RNN reads each representation of the clicked item with its own GRU
    *subnet* (the ID's one-hot vector, and each feature set passed to :meth:`fit`) and
    merges the subnets' hidden states to score every item. Each subnet is GRU4Rec's GRU:
    session-parallel mini-batches with hidden-state resets, no back-propagation through
    time, sampled scores (in-batch negatives plus ``n_sample`` drawn by
    support to the power ``sample_alpha``), the same losses, Adagrad with momentum, and sparse row
    updates of the ID input and output tables and of the input weights of sparse
    features.

    Architectures (``architecture``):

    * ``"id"``: one GRU over the one-hot ID (the session-only RNN of GRU4Rec).
    * ``"feature"``: one GRU over the item features (all feature sets).
    * ``"concat"``: one GRU whose input is the ID and every feature set concatenated.
    * ``"parallel"``: one GRU per representation (ID first, then each feature set); the
      scores are computed from the concatenated hidden states (each subnet has its own
      output weights and bias, and the scores add up).
    * ``"shared_w"``: the weighted sum of the subnets' hidden states (``subnet_weights``)
      times one shared output matrix.
    * ``"interaction"``: a feature subnet's hidden state is multiplied element-wise by
      the ID subnet's before its output weights (the ID subnet keeps its own scores).

    Training strategies (``training``), for the architectures with several subnets (for
    ``"id"``, ``"feature"`` and ``"concat"`` all four are plain training):

    * ``"simultaneous"``: every parameter is trained on the merged scores, ``n_epochs``
      epochs.
    * ``"alternating"``: one subnet per epoch (ID, then each feature subnet, and again),
      the others frozen but in the forward pass; ``n_epochs`` epochs in all.
    * ``"residual"``: the subnets one after another, ``subnet_epochs`` epochs each; subnet
      ``k`` is trained on the merged scores of subnets ``0..k`` with ``0..k-1`` frozen, so
      it learns the residual of the ensemble before it. Later subnets are not in the
      forward pass until their turn.
    * ``"interleaving"``: alternation per mini-batch: for each mini-batch, subnet 0 is
      trained on its own scores, then subnet 1 on the merged scores of 0 and 1 with 0
      frozen, and so on; ``n_epochs`` epochs.

    Frozen parameters get no gradient and no optimiser step (their accumulators and
    momenta do not move either). With ``"shared_w"`` the shared output matrix belongs to
    every subnet: it is trained whenever any subnet is.

    Parameters
    ----------
    architecture : {"parallel", "id", "feature", "concat", "shared_w", "interaction"}, \
default="parallel"
        How the representations are combined (above).
    training : {"residual", "simultaneous", "alternating", "interleaving"}, \
default="residual"
        Training strategy (above); the paper's best with ``"parallel"`` is residual.
    hidden_size : int or dict, default=100
        Hidden units per subnet (the paper's 100 + 100), or a dict from subnet name to
        size. Subnet names: ``"id"`` and the feature-set names for the parallel
        architectures, ``"id"``, ``"features"`` or ``"concat"`` for the single-GRU ones.
        ``"shared_w"`` and ``"interaction"`` need equal sizes.
    subnet_weights : dict or None, default=None
        Weight of each subnet's hidden state for ``"shared_w"`` (by subnet name); None
        gives every subnet weight 1 (the paper found equal weights best).
    subnet_epochs : int, dict or None, default=None
        Epochs per subnet for ``training="residual"``: one number for every subnet, or a
        dict from subnet name to epochs (subnets left out get ``n_epochs``); None means
        ``n_epochs``. Fewer epochs for a feature subnet limit how far it fits the
        residual of a small data set.
    feature_output : bool, default=False
        Beyond the paper: score items through their features as well as their ID rows.
        In each subnet that reads features, item ``j``'s output row and bias become its
        ID row plus ``sum_f x_fj Q_f`` (one learned matrix per feature set; sparse sets
        update only the rows at the scored items' non-zero columns). Items that have
        features but **no training event** join the catalogue (``item_index_``, support
        0, after the training items): their ID rows are zero, so they are scored,
        recommended and ranked through their features alone, and a session that clicks
        one is understood through its features. The ID output rows of these subnets
        start at zero (the shared feature part learns what items have in common first).
        Applies to ``"feature"``, ``"concat"``, ``"parallel"`` and ``"interaction"``
        (in the last two, to the feature subnets; the ID subnet keeps its own rows);
        not to ``"id"`` (no features) or ``"shared_w"`` (one output table for all
        subnets).
    output_id_dropout : float in [0, 1), default=0.5
        With ``feature_output``: in each training step, this share of the scored items
        lose their ID rows in every subnet, as if they had no training events, so that
        the feature part learns to score an item on its own and cold-start items are
        scored on the scale of the others (the idea of DropoutNet, Volkovs et al.,
        NeurIPS 2017). 0 trains the two parts together only.
    loss : {"top1", "cross-entropy", "bpr-max", "top1-max", "bpr"}, default="top1"
        Training loss (the paper: TOP1). Definitions as in :class:`GRU4RecRecommender`.
    batch_size : int, default=50
        Parallel session slots (the GRU4Rec paper's setting).
    dropout_p_hidden : float in [0, 1), default=0.0
        Dropout on each subnet's output (the carried hidden state, as in GRU4Rec).
    learning_rate : float, default=0.05
        Adagrad learning rate.
    momentum : float in [0, 1), default=0.0
    n_sample : int, default=128
        Extra negatives per mini-batch, drawn by support to the power ``sample_alpha``; 0 gives
        in-batch negatives only, the paper's setting. Not the paper's default, because
        of what it costs with noisy features: with in-batch negatives a rare item is a
        negative almost never, so its output row is only ever pulled towards the
        states of the clicks before it, and a feature subnet, whose input carries every
        item's own noise, learns those noise vectors as keys of the training
        transitions (on the noisy-feature regime of ``benchmarks/bench_prnn.py``,
        feature-only p-RNN: MRR@20 0.43 on training sessions, 0.08 on test ones).
        Sampled negatives push those rows back (test MRR@20 0.18, above ID-only).
    sample_alpha : float in [0, 1], default=0.5
    bpreg, elu_param, logq, final_activation
        As in :class:`GRU4RecRecommender`.
    n_epochs : int, default=10
    early_stopping : bool, default=False
        Choose the epochs on held-out sessions: hold out the last ``validation_fraction``
        of the sessions (those that start last), score the model on them after every
        epoch (MRR@20, all items ranked, conservative ties) and keep the best epoch. With
        residual training this is done per subnet: a subnet keeps its best epoch, and a
        subnet whose training never beats the ensemble before it is left out of scoring
        (``subnet_active_``), so a feature set that carries no signal cannot make the
        model worse than the ones before it. With interleaving training, where subnet
        ``k`` learns on the merged scores of subnets ``0..k``, every epoch scores each
        such prefix and keeps the best epoch and prefix: later subnets that do not help
        are left out of scoring (``subnet_active_``). Not in the paper, which tuned the
        number of epochs on a validation set by hand.
    validation_fraction : float in (0, 1), default=0.1
        Share of the sessions held out when ``early_stopping`` is on.
    n_iter_no_change : int or None, default=None
        With ``early_stopping``: stop after this many epochs in a row without a better
        validation score (residual training: move on to the next subnet); None trains
        every epoch and keeps the best.
    refit : bool, default=True
        With ``early_stopping``: train again, from the same initial weights, on all the
        sessions for the epochs chosen (per subnet in residual training; a subnet left
        out stays out), as one does after tuning epochs by hand. The held-out sessions
        are the most recent ones, so leaving them out costs accuracy on what comes next
        (on the planted benchmark of ``benchmarks/bench_prnn.py``, with the paper's in-batch
        negatives, ID-only early stopping
        reaches MRR@20 0.0802 with the refit and 0.0768 without, mean of 3 seeds). Costs
        a second training run. ``refit=False`` keeps the parameters of the best epochs,
        trained without the held-out sessions.
    callbacks : list of Callback or callable, or None, default=None
        Called during training (see :mod:`sessionrec.callbacks`), as for
        :class:`GRU4RecRecommender`; each subnet of residual training and the refit are
        training runs of their own (``on_train_begin`` / ``on_train_end``).
    sample_store_size : int, default=10_000_000
    session_key, item_key, time_key : str
        Column names.
    device : str, default="auto"
        ``"auto"`` trains on CUDA when available, else on the CPU; or ``"cpu"``, ``"cuda"``.
    {distributed}
    random_state : int or None, default=None
        Seed; with an int, CPU training is repeatable bit for bit.
    {epoch_verbose}

    Attributes
    ----------
    network_ : ParallelNetwork
    history_ : list of dict
        Per epoch (numbered over the whole fit): ``epoch``, ``loss``, ``start_loss``
        (that of the epoch's first mini-batch), ``seconds``, ``events_per_s``,
        ``batches_per_s``,
        ``trained`` (the names of the subnets trained in that epoch) and, with
        ``early_stopping``, ``validation_mrr`` and ``refit``: the epochs of the run on the
        sessions left after the hold-out come first (``refit`` False), then, with
        ``refit=True``, those of the run on all sessions (``validation_mrr`` NaN).
    subnet_names_ : list of str
    subnet_active_ : dict
        Per subnet, whether it takes part in scoring (False only for a subnet that early
        stopping left out).
    subnet_epochs_ : dict
        Residual training with ``early_stopping`` only: the epochs each subnet kept (0 for
        a subnet left out).
    best_validation_score_ : float
        With ``early_stopping``: the validation MRR@20 of the best epochs, before any
        refit (the refit model has also trained on the held-out sessions).
    best_epoch_ : int
        With ``early_stopping``: the epochs chosen, summed over the phases (residual
        training: over the subnets, ``subnet_epochs_`` has each).
    feature_names_ : list of str
        The feature sets, in the order of their subnets.
    feature_coverage_ : dict
        Per feature set, the share of training items that had features.

    Notes
    -----
    Item features (``fit(X, item_features=...)``): one feature set, or a dict of named
    sets, each an :class:`~sessionrec.preprocessing.ItemFeatures` (e.g. from
    :class:`~sessionrec.preprocessing.TfidfItemFeatures`), a DataFrame indexed by item
    label, or a ``(labels, matrix)`` pair where the matrix is a numpy array or a scipy
    sparse matrix. Sparse sets stay sparse: a step reads the non-zeros of the clicked
    items' rows and updates only the input-weight rows at those columns. Features of items
    not in the training events are ignored. **Items without features** get a zero feature
    vector: their feature subnet input is the GRU's bias alone, and their prediction
    rests on the ID subnet; ``feature_coverage_`` reports how many items had features.
    The features are kept with the fitted model, so prediction needs only events.

    Choices where the paper is silent:

    * In interleaving, the frozen earlier subnets' states are those computed at the start
      of the mini-batch (each subnet's state advances once per mini-batch).
    * Each subnet of the parallel architecture has its own output bias (a single shared
      bias would tie the subnets' residual training together).
    * The ID input is the one-hot representation (an ``n_items x 3H`` table), as in the
      paper; features enter linearly, without an embedding layer (the paper found one
      worse).

    References
    ----------
    Hidasi, Quadrana, Karatzoglou, Tikk. Parallel recurrent neural network architectures
    for feature-rich session-based recommendations. RecSys 2016.

    Examples
    --------
    >>> from sessionrec import ParallelRNNRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> events, features = make_sessions(n_sessions=200, n_items=50, random_state=0,
    ...                                  return_item_features=True)
    >>> model = ParallelRNNRecommender(hidden_size=16, n_epochs=1, device="cpu",
    ...                                random_state=0)
    >>> model = model.fit(events, item_features={"topic": features})
    >>> model.subnet_names_
    ['id', 'topic']
    >>> model.predict_next(events[events["SessionId"] == 0], k=3).shape
    (1, 3)
    """

    def __init__(self, *, architecture="parallel", training="residual", hidden_size=100,
                 subnet_weights=None, subnet_epochs=None, feature_output=False,
                 output_id_dropout=0.5, loss="top1", batch_size=50,
                 dropout_p_hidden=0.0, learning_rate=0.05, momentum=0.0, n_sample=128,
                 sample_alpha=0.5, bpreg=1.0, elu_param=0.5, logq=0.0,
                 final_activation="auto", n_epochs=10, early_stopping=False,
                 validation_fraction=0.1, n_iter_no_change=None, refit=True,
                 callbacks=None, sample_store_size=10_000_000,
                 session_key="SessionId", item_key="ItemId", time_key="Time",
                 device="auto", distributed=False, random_state=None, verbose=False):
        self.architecture = architecture
        self.training = training
        self.hidden_size = hidden_size
        self.subnet_weights = subnet_weights
        self.subnet_epochs = subnet_epochs
        self.feature_output = feature_output
        self.output_id_dropout = output_id_dropout
        self.loss = loss
        self.batch_size = batch_size
        self.dropout_p_hidden = dropout_p_hidden
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.n_sample = n_sample
        self.sample_alpha = sample_alpha
        self.bpreg = bpreg
        self.elu_param = elu_param
        self.logq = logq
        self.final_activation = final_activation
        self.n_epochs = n_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.refit = refit
        self.callbacks = callbacks
        self.sample_store_size = sample_store_size
        self.session_key = session_key
        self.item_key = item_key
        self.time_key = time_key
        self.device = device
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose

    # -- parameters -----------------------------------------------------------------------

    _parameter_constraints: dict = {
        **SessionRecommender._parameter_constraints,
        **{name: constraint for name, constraint
           in SampledTrainingMixin._training_constraints.items()
           if name not in ("embedding", "constrained_embedding")},  # one-hot ID input
        "architecture": [StrOptions(set(ARCHITECTURES))],
        "training": [StrOptions(set(TRAININGS))],
        "hidden_size": [Interval(Integral, 1, None, closed="left"),
                        Satisfies(lambda v: _mapping_of(v, _positive_int),
                                  "a dict from subnet name to an int >= 1")],
        "subnet_weights": [None, Satisfies(lambda v: _mapping_of(v, _finite_real),
                                           "a dict from subnet name to a finite real")],
        "subnet_epochs": [None, Interval(Integral, 1, None, closed="left"),
                          Satisfies(lambda v: _mapping_of(v, _positive_int),
                                    "a dict from subnet name to an int >= 1")],
        "dropout_p_hidden": DROPOUT,
        "feature_output": ["boolean"],
        "output_id_dropout": DROPOUT,
    }

    _LEGACY_PARAMS = {"distributed": False, "n_iter_no_change": None, "callbacks": None,
                      "feature_output": False,
                      "output_id_dropout": 0.5}

    _trainer_name = "p-RNN"

    def _subnets(self, feature_names: list[str]) -> list[tuple[str, bool, tuple[int, ...]]]:
        """(name, uses the ID, feature-set indices) of each subnet."""
        every = tuple(range(len(feature_names)))
        if self.architecture == "id":
            return [("id", True, ())]
        if self.architecture == "feature":
            return [("features", False, every)]
        if self.architecture == "concat":
            return [("concat", True, every)]
        return [("id", True, ())] + [(name, False, (j,)) for j, name in
                                     enumerate(feature_names)]

    def _sized(self, names: list[str], value, what: str, default) -> list:
        if not isinstance(value, Mapping):
            return [value if value is not None else default] * len(names)
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"{what} names unknown subnets {unknown}; the subnets are "
                             f"{names}.")
        if default is None:
            missing = [n for n in names if n not in value]
            if missing:
                raise ValueError(f"{what} gives no value for subnets {missing}.")
        return [value.get(n, default) for n in names]

    def _build_network(self, features: list, feature_names: list[str]) -> ParallelNetwork:
        layout = self._subnets(feature_names)
        names = [name for name, _, _ in layout]
        sizes = self._sized(names, self.hidden_size, "hidden_size", None)
        weights = self._sized(names, self.subnet_weights, "subnet_weights", 1.0)
        specs = [SubnetSpec(name, int(size), uses_id, feats)
                 for (name, uses_id, feats), size in zip(layout, sizes, strict=True)]
        head = _HEAD[self.architecture]
        if head != "sum" and len({s.hidden for s in specs}) > 1:
            raise ValueError(f"architecture={self.architecture!r} needs equal hidden sizes "
                             f"for all subnets; got hidden_size={self.hidden_size!r}.")
        return ParallelNetwork(self.n_items_, specs, head, features, weights,
                               feature_output=bool(self.feature_output),
                               n_known=int((self.item_index_.support > 0).sum()))

    def _phases(self, names: list[str]) -> list[tuple[int, list]]:
        """(epochs, updates of every step) for each call of the training loop."""
        n_subnets = len(names)
        every = tuple(range(n_subnets))
        epochs = int(self.n_epochs)
        per = self._sized(names, self.subnet_epochs, "subnet_epochs", epochs)
        if n_subnets == 1 or self.training == "simultaneous":
            if n_subnets == 1 and self.training == "residual":
                epochs = int(per[0])
            return [(epochs, [(every, every)])]
        if self.training == "alternating":
            return [(1, [((e % n_subnets,), every)]) for e in range(epochs)]
        if self.training == "residual":
            return [(int(per[k]), [((k,), tuple(range(k + 1)))]) for k in range(n_subnets)]
        return [(epochs, [((k,), tuple(range(k + 1))) for k in range(n_subnets)])]

    # -- training -------------------------------------------------------------------------

    def fit(self, X, y=None, *, item_features=None):
        """Learn from the events in ``X`` and the items' features.

        Parameters
        ----------
        X : pandas.DataFrame
            Training events with the session, item and time columns.
        y : None
            Ignored.
        item_features : ItemFeatures, DataFrame, (labels, matrix) pair, dict of those, \
or None
            The feature sets (see the class's Notes); None only with
            ``architecture="id"``. Data, not a hyperparameter: in ``GridSearchCV`` or a
            ``Pipeline`` pass it to ``fit``; with scikit-learn's metadata routing on,
            request it first, ``set_fit_request(item_features=True)``. Features are rows
            of items, not of events, and are never split by a search: but scikit-learn
            cuts any table whose length equals ``len(X)`` per fold before it gets here,
            so in a search pass :class:`~sessionrec.preprocessing.ItemFeatures` (what the
            encoders return; not a table) or a dict of feature sets.

        Returns
        -------
        self : ParallelRNNRecommender
        """
        return super().fit(X, y, item_features=item_features)

    def _fit(self, events: SessionEvents, item_features=None) -> None:
        if (not isinstance(item_features, (ItemFeatures, Mapping)) and item_features is not None
                and len(item_features) == events.n_events):
            # The length by which scikit-learn takes a fit parameter for one row per event
            # and cuts it per fold in searches, Pipelines and cross_validate.
            warnings.warn(
                f"item_features is a table of {events.n_events} rows, as many as X: "
                "scikit-learn's searches and cross-validation cut such a table per fold as "
                "if its rows were events, which leaves items without features. Pass an "
                "ItemFeatures (sessionrec.preprocessing) or a dict of feature sets.",
                UserWarning, stacklevel=3)
        sets = _feature_sets(item_features)
        if self.architecture != "id" and not sets:
            raise ValueError(f"architecture={self.architecture!r} needs item features: pass "
                             "fit(X, item_features=...).")
        if self.architecture == "id":
            sets = {}
        if self.feature_output and self.architecture in ("id", "shared_w"):
            raise ValueError(
                f"feature_output=True does not apply to architecture={self.architecture!r}: "
                "it adds a feature part to the output rows of the subnets that read "
                "features, each with its own output table ('feature', 'concat', "
                "'parallel', 'interaction').")
        if self.feature_output:
            self._add_cold_items(sets)
        labels = self.item_index_.labels
        features, coverage = [], {}
        for name, item_set in sets.items():
            matrix, known = item_set.align(labels)
            if not known.any():
                raise ValueError(f"item_features[{name!r}] has no row for any training "
                                 f"item; check that its index holds item labels like "
                                 f"{list(labels[:3])}.")
            features.append(matrix)
            coverage[name] = float(known.mean())
        feature_names = list(sets)
        network, generator = self._initialised(self._build_network(features, feature_names))
        names = [s.name for s in network.subnets]
        phases = self._phases(names)
        trainer = self._trainer()
        if not self.early_stopping:
            self._train(network, generator, events, phases, trainer)
        else:
            selection, validation = hold_out_last_sessions(
                events, float(self.validation_fraction))
            stopper = _BestEpochs(network,
                                  lambda: self._validation_mrr(network, validation),
                                  self.n_iter_no_change)
            kept = self._train(network, generator, selection, phases, trainer, stopper,
                               extra={"refit": False})
            active = list(network.active)
            self.best_validation_score_ = stopper.best
            self.best_epoch_ = max(int(sum(kept)), 1)
            if self.training == "residual" and len(names) > 1:
                self.subnet_epochs_ = dict(zip(names, kept, strict=True))
            del stopper  # its copy of the parameters is no longer needed
            if self.refit:
                # The selected epochs again, from the same start, on every session: the
                # held-out sessions are the most recent ones, the most informative about
                # what comes next.
                network, generator = self._initialised(
                    self._build_network(features, feature_names),
                    seed=generator.initial_seed())
                network.active = active
                chosen = [(k, updates) for k, (_, updates) in zip(kept, phases, strict=True)]
                self._train(network, generator, events, chosen, trainer, label=" refit",
                            extra={"refit": True, "validation_mrr": np.nan})
        trainer.warn_if_diverged(stacklevel=4)
        self.history_ = trainer.history
        self.subnet_active_ = dict(zip(names, network.active, strict=True))
        self.network_ = network
        self.subnet_names_ = names
        self.feature_names_ = feature_names
        self.feature_coverage_ = coverage

    def _add_cold_items(self, sets: dict[str, ItemFeatures]) -> None:
        """Append the items that have features but no training event to the item index
        (support 0, after the training items, whose codes do not change), so that they
        are scored, recommended and ranked."""
        index = self.item_index_
        cold = []
        for item_set in sets.values():
            known = index.labels.append(pd.Index(cold)) if cold else index.labels
            new = item_set.labels[known.get_indexer(item_set.labels) < 0]
            cold.extend(new.tolist())
        if not cold:
            return
        labels = index.labels.append(pd.Index(cold))
        self.item_index_ = ItemIndex(labels, np.r_[index.support,
                                                   np.zeros(len(cold), dtype=np.int64)])
        self.n_items_ = self.item_index_.n_items

    def _step_config(self) -> StepConfig:
        return replace(super()._step_config(), dropout_p_hidden=float(self.dropout_p_hidden),
                       output_id_dropout=float(self.output_id_dropout)
                       if self.feature_output else 0.0)

    def _train(self, network: ParallelNetwork, generator: torch.Generator,
               events: SessionEvents, phases: list, trainer: Trainer,
               stopper: _BestEpochs | None = None, label: str = "",
               extra: dict | None = None) -> list[int]:
        """Train ``network`` on ``events`` through ``phases`` (as :meth:`_phases` gives),
        one :meth:`Trainer.run <sessionrec._training.Trainer.run>` per phase.

        Returns, with a ``stopper``, the epochs kept of each phase, with the kept
        parameters restored (residual training: each subnet's best epoch, 0 for a subnet
        left out, which ``network.active`` then marks; otherwise the phases up to the
        run's best epoch). A phase of 0 epochs is skipped. ``label`` is appended to the
        name in the log lines; ``extra`` is added to every record.
        """
        schedule = session_parallel_schedule(events, int(self.batch_size))
        names = [s.name for s in network.subnets]
        residual = self.training == "residual" and len(names) > 1
        if stopper is not None:
            stopper.start(phases, residual,
                          prefixes=self.training == "interleaving" and len(names) > 1)
            trainer.callbacks.insert(0, stopper)  # the others see validation_mrr
        self.network_ = network  # callbacks may score the model between epochs
        try:
            with TrainingRun(self, network, generator, events, schedule) as run:
                for phase, (epochs, updates) in enumerate(phases):
                    if epochs == 0:  # a phase the refit leaves out, as early stopping chose
                        continue
                    run.training.updates = updates
                    trained = sorted({names[i] for group, _ in updates for i in group},
                                     key=names.index)
                    if stopper is not None:
                        stopper.begin_phase(phase)
                    run.run(trainer, n_epochs=epochs,
                            name=f"p-RNN [{'+'.join(trained)}]{label}",
                            extra={**(extra or {}), "trained": trained})
                    if stopper is not None:
                        stopper.end_phase(phase)
                    if trainer.stopped and not (residual and stopper.stalled):
                        break  # stopped by a callback, or early stopping ran out of patience
            if stopper is not None:
                stopper.restore()
        finally:
            if stopper is not None:
                trainer.callbacks.remove(stopper)
        return stopper.kept if stopper is not None else []

    def _validation_mrr(self, network: ParallelNetwork, events: SessionEvents) -> float:
        """MRR@20 (conservative ties, all items ranked) of ``network`` on held-out events."""
        return mrr_of_score_blocks(self._walk(events, ~events.is_last, network), events,
                                   self.device_)

    # -- prediction -----------------------------------------------------------------------

    def _iter_scores(self, events: SessionEvents, score_after: np.ndarray):
        yield from self._walk(events, score_after, self.network_)

    def _empty_history_scores(self, events, sessions) -> torch.Tensor:
        # No event yet: zero states, so the scores are the output biases.
        return self.network_.score_all(self.network_.zero_state(1))[0]

    # -- persistence ----------------------------------------------------------------------

    def _get_state(self) -> dict:
        network = self.network_
        specs = [{"name": s.name, "hidden": s.hidden, "uses_id": s.uses_id,
                  "features": list(s.features)} for s in network.subnets]
        return {"network": dict(network.state_dict()), "history": self.history_,
                "subnets": specs, "head": network.head,
                "subnet_weights": list(network.subnet_weights),
                "feature_output": network.feature_output, "n_known": network.n_known,
                "feature_dims": list(network.feature_dims),
                "feature_sparse": list(network.feature_sparse),
                "feature_names": list(self.feature_names_),
                "subnet_active": list(network.active),
                "feature_coverage": dict(self.feature_coverage_),
                # Early stopping's choices (absent without it).
                "selection": {name: getattr(self, name) for name in
                              ("best_validation_score_", "best_epoch_", "subnet_epochs_")
                              if hasattr(self, name)}}

    def _set_state(self, state: dict) -> None:
        weights = state["network"]
        features = []
        for j, (dim, sparse) in enumerate(zip(state["feature_dims"], state["feature_sparse"],
                                              strict=True)):
            if sparse:
                features.append(sp.csr_matrix(
                    (weights[f"f{j}_val"].numpy(), weights[f"f{j}_col"].numpy(),
                     weights[f"f{j}_crow"].numpy()), shape=(self.n_items_, dim)))
            else:
                features.append(weights[f"f{j}_dense"].numpy())
        specs = [SubnetSpec(s["name"], int(s["hidden"]), bool(s["uses_id"]),
                            tuple(s["features"])) for s in state["subnets"]]
        network = ParallelNetwork(self.n_items_, specs, state["head"], features,
                                  state["subnet_weights"],
                                  feature_output=state.get("feature_output", False),
                                  n_known=state.get("n_known"))
        network.load_state_dict(weights)
        network.active = list(state.get("subnet_active", [True] * len(specs)))
        self.network_ = network
        self.subnet_active_ = dict(zip([s.name for s in specs], network.active, strict=True))
        self.history_ = state["history"]
        self.subnet_names_ = [s.name for s in specs]
        self.feature_names_ = list(state["feature_names"])
        self.feature_coverage_ = dict(state["feature_coverage"])
        for name, value in state.get("selection", {}).items():
            setattr(self, name, value)


class _BestEpochs(Callback):
    """p-RNN's early stopping: the best epoch of the run, or of each residual subnet.

    After every epoch (a trainer callback, run before the user's) the network is scored
    and its parameters copied when the score beats the best so far; ``restore()`` writes
    the best copy back (into the parameters' own storage, which during training is
    shared with the optimiser's packed tables). Before any epoch, the best copy is the
    initial network with score -inf. ``kept`` holds the epochs kept of each phase:
    residual training keeps each subnet's best epoch (a subnet that never beats the
    ensemble before it keeps 0 and is left out of scoring); otherwise the phases up to
    the run's best epoch. With ``patience``, a phase (residual) or the run stops after
    that many epochs in a row without a better score.
    """

    def __init__(self, network: torch.nn.Module, score, patience: int | None = None):
        self.network = network
        self.score = score
        self.patience = patience
        self.saved = {name: p.detach().clone() for name, p in network.named_parameters()}
        self.best = -np.inf
        self.last = np.nan
        self.stalled = False

    def start(self, phases: list, residual: bool, prefixes: bool = False) -> None:
        self.phases, self.residual, self.prefixes = phases, residual, prefixes
        self.kept = [0] * len(phases)
        self.best_active = list(self.network.active)
        if residual:  # a subnet scores once training reaches it
            self.network.active = [k == 0 for k in range(len(phases))]

    def begin_phase(self, phase: int) -> None:
        self.phase, self.epoch, self.stalled = phase, 0, False
        if self.residual:  # patience counts per subnet; otherwise over the run
            self.since_best = 0
            self.network.active[phase] = True
        elif phase == 0:
            self.since_best = 0

    def _score_prefixes(self) -> float:
        """Interleaving: subnet ``k`` is trained on the merged scores of ``0..k``, so
        each prefix of the subnets is a model; score each, keep the best one active."""
        n = len(self.network.subnets)
        found = []
        for k in range(n):
            self.network.active = [i <= k for i in range(n)]
            found.append(self.score())
        k = int(np.argmax(found))  # the first of equal scores: fewer subnets
        self.network.active = [i <= k for i in range(n)]
        return found[k]

    def on_epoch_end(self, model, record):
        self.epoch += 1
        self.last = self._score_prefixes() if self.prefixes else self.score()
        record["validation_mrr"] = self.last
        improved = self.last > self.best
        if improved:
            self.best = self.last
            self.best_active = list(self.network.active)
            for name, p in self.network.named_parameters():
                self.saved[name].copy_(p.detach())
            if self.residual:
                self.kept[self.phase] = self.epoch
            else:  # the whole run so far
                phases = self.phases
                self.kept = ([e for e, _ in phases[:self.phase]] + [self.epoch]
                             + [0] * (len(phases) - self.phase - 1))
        self.since_best = 0 if improved else self.since_best + 1
        self.stalled = self.patience is not None and self.since_best >= self.patience
        return self.stalled

    def end_phase(self, phase: int) -> None:
        if self.residual:
            # The subnet keeps its best epoch; if no epoch beat the ensemble before it,
            # it is left out of scoring for good.
            self.restore()
            self.network.active[phase] = phase == 0 or self.kept[phase] > 0

    @torch.no_grad()
    def restore(self) -> None:
        for name, p in self.network.named_parameters():
            p.copy_(self.saved[name])
        if self.prefixes:
            self.network.active = list(self.best_active)
