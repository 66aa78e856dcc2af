"""Checks of parameters, run in ``fit`` (never in ``__init__``).

Constructor parameters are declared, per estimator and transformer, in scikit-learn's
``_parameter_constraints`` and checked by scikit-learn's own machinery
(:func:`validate_constraints`): a wrong value raises
``sklearn.utils._param_validation.InvalidParameterError`` (both a ``ValueError`` and a
``TypeError``) naming the parameter, the estimator and what was expected. The constraint
objects that several classes share are here, with :class:`Satisfies` for the rules
scikit-learn has no object for (a tuple of sizes, a dict of subnet sizes, a device).

The ``check_*`` helpers check the arguments of methods (``predict_next(k=...)``) and of
functions, with a ``ValueError`` or ``TypeError`` that names the argument.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping
from numbers import Integral, Real

import numpy as np
import torch
from sklearn import get_config
from sklearn.utils._param_validation import HasMethods, Interval

__all__ = [
    "Satisfies",
    "validate_constraints",
    "COLUMN",
    "USER_COLUMN",
    "DEVICE",
    "RANDOM_STATE",
    "POSITIVE_INT",
    "NON_NEGATIVE_INT",
    "POSITIVE_REAL",
    "NON_NEGATIVE_REAL",
    "DROPOUT",
    "int_tuple_constraint",
    "check_choice",
    "check_int",
    "check_real",
    "check_bool",
    "check_int_tuple",
    "resolve_device",
    "torch_generator",
]


class Satisfies(HasMethods):
    """A parameter constraint defined by a predicate, for scikit-learn's validation.

    ``test(value)`` says whether ``value`` is valid (an exception counts as no);
    ``description`` completes "must be ..." in the error message. (A subclass of
    ``HasMethods`` only because scikit-learn's ``make_constraint`` takes such objects
    as they are; its checks generate an object without methods as an invalid value.)

    Examples
    --------
    >>> from sklearn.utils._param_validation import validate_parameter_constraints
    >>> even = Satisfies(lambda v: v % 2 == 0, "an even number")
    >>> validate_parameter_constraints({"n": [even]}, {"n": 3}, caller_name="f")
    Traceback (most recent call last):
    ...
    sklearn.utils._param_validation.InvalidParameterError: The 'n' parameter of f must be \
an even number. Got 3 instead.
    """

    def __init__(self, test, description: str):
        super().__init__([])
        self.test = test
        self.description = description

    def is_satisfied_by(self, val) -> bool:
        try:
            return bool(self.test(val))
        except Exception:  # noqa: BLE001 - a value the predicate cannot read is invalid
            return False

    def __str__(self) -> str:
        return self.description


def validate_constraints(estimator) -> None:
    """Check ``estimator``'s parameters against its ``_parameter_constraints`` with
    scikit-learn's machinery, unless ``sklearn.set_config(skip_parameter_validation=True)``
    turned validation off (as for scikit-learn's own estimators)."""
    if not get_config().get("skip_parameter_validation", False):
        estimator._validate_params()


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def int_tuple_constraint(min_value: int = 1) -> Satisfies:
    """An int >= ``min_value``, or a non-empty sequence of them (e.g. ``layers``)."""

    def test(value) -> bool:
        if _is_int(value):
            return value >= min_value
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
            return False
        value = list(value)
        return bool(value) and all(_is_int(v) and v >= min_value for v in value)

    return Satisfies(test, f"an int >= {min_value} or a non-empty sequence of ints >= "
                           f"{min_value}")


def _is_device(value) -> bool:
    if isinstance(value, torch.device):
        return value.type in ("cpu", "cuda")
    if not isinstance(value, str):
        return False
    return value == "auto" or torch.device(value).type in ("cpu", "cuda")


# Shared constraints (lists, as scikit-learn's _parameter_constraints takes them).
# A column label: a string, an integer or a tuple (of a MultiIndex).
COLUMN = [str, Integral, tuple]
USER_COLUMN = COLUMN  # None (no user column) is refused: the models of users need one
DEVICE = [Satisfies(_is_device, "'auto', 'cpu', 'cuda', 'cuda:N' or a CPU or CUDA "
                                "torch.device")]
RANDOM_STATE = ["random_state", np.random.Generator]
POSITIVE_INT = [Interval(Integral, 1, None, closed="left")]
NON_NEGATIVE_INT = [Interval(Integral, 0, None, closed="left")]
POSITIVE_REAL = [Interval(Real, 0, None, closed="neither")]
NON_NEGATIVE_REAL = [Interval(Real, 0, None, closed="left")]
DROPOUT = [Interval(Real, 0, 1, closed="left")]


def _type_name(value) -> str:
    return type(value).__name__


def check_int(name: str, value, *, min_value: int | None = None,
              max_value: int | None = None) -> int:
    """Return ``value`` as an ``int`` after checking its type and range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({_type_name(value)}).")
    value = int(value)
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}.")
    if max_value is not None and value > max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}.")
    return value


def check_real(name: str, value, *, min_value: float | None = None,
               max_value: float | None = None, min_inclusive: bool = True,
               max_inclusive: bool = True) -> float:
    """Return ``value`` as a finite ``float`` after checking its type and range."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({_type_name(value)}).")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}.")
    if min_value is not None:
        bad = value < min_value if min_inclusive else value <= min_value
        if bad:
            op = ">=" if min_inclusive else ">"
            raise ValueError(f"{name} must be {op} {min_value}, got {value}.")
    if max_value is not None:
        bad = value > max_value if max_inclusive else value >= max_value
        if bad:
            op = "<=" if max_inclusive else "<"
            raise ValueError(f"{name} must be {op} {max_value}, got {value}.")
    return value


def check_bool(name: str, value) -> bool:
    """Return ``value`` as a ``bool``; only real booleans are accepted."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r} ({_type_name(value)}).")
    return bool(value)


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """Return ``value`` after checking it is one of ``choices``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        listed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {listed}; got {value!r}.")
    return value


def check_int_tuple(name: str, value, *, min_value: int = 1,
                    allow_empty: bool = False) -> tuple[int, ...]:
    """Return ``value`` (an int or a sequence of ints) as a tuple of ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
        value = (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be an int or a sequence of ints, got {value!r}.")
    out = tuple(check_int(f"{name}[{i}]", v, min_value=min_value) for i, v in enumerate(value))
    if not out and not allow_empty:
        raise ValueError(f"{name} must not be empty.")
    return out


def resolve_device(device) -> torch.device:
    """Turn the ``device`` parameter into a ``torch.device``.

    ``"auto"`` means CUDA when a CUDA device is available, the CPU otherwise. Asking for
    CUDA explicitly on a machine without it is an error rather than a silent fallback.
    """
    if isinstance(device, torch.device):
        resolved = device
    elif isinstance(device, str):
        if device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            resolved = torch.device(device)
        except RuntimeError as exc:
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}."
            ) from exc
    else:
        raise TypeError(f"device must be a string or torch.device, got {device!r}.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine; "
            "use device='auto' or 'cpu'."
        )
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be a CPU or CUDA device; got {device!r}.")
    return resolved


def torch_generator(random_state, device: torch.device) -> tuple[np.random.Generator,
                                                                 torch.Generator]:
    """Derive a numpy and a torch random generator from ``random_state``.

    ``random_state`` may be None (fresh entropy), an int, or a ``numpy.random.Generator``
    / ``RandomState``; both generators are seeded from it so one integer controls every
    random choice of a fit.
    """
    if isinstance(random_state, np.random.RandomState):
        seed = int(random_state.randint(0, 2**31 - 1))
    elif isinstance(random_state, np.random.Generator):
        seed = int(random_state.integers(0, 2**31 - 1))
    elif random_state is None:
        seed = int(np.random.SeedSequence().generate_state(1)[0] & 0x7FFFFFFF)
    elif isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        seed = int(random_state)
        if seed < 0:
            raise ValueError(f"random_state must be a non-negative integer, got {seed}.")
    else:
        raise TypeError(
            "random_state must be None, an int or a numpy random generator; "
            f"got {random_state!r}."
        )
    np_gen = np.random.default_rng(seed)
    torch_gen = torch.Generator(device=device)
    torch_gen.manual_seed(seed)
    return np_gen, torch_gen


def init_generator(generator: torch.Generator) -> torch.Generator:
    """A CPU generator for parameter initialisation, derived from the run's ``generator``.

    Its stream is independent of ``generator``'s: seeding both with the same integer would
    make them draw the same numbers on the CPU, tying each item's initial weights to the
    first negative samples and dropout masks of training. The seed is spawned from the
    run's seed with :class:`numpy.random.SeedSequence`, so one ``random_state`` still
    fixes both, and initialisation does not depend on the training device.
    """
    seed = np.random.SeedSequence(int(generator.initial_seed()), spawn_key=(1,))
    return torch.Generator().manual_seed(int(seed.generate_state(1, dtype=np.uint64)[0]
                                             & np.uint64(2**63 - 1)))
