"""Fused CPU kernels of the training steps and of evaluation (a small optional C library).

A CPU training step of the recurrent models is made of a few matrix products and many
small element-wise operations; each PyTorch operation costs microseconds of dispatch and
a pass over memory. The sparse Adagrad step alone (gather the touched rows of three
planes, five arithmetic passes, scatter them back) took more time than the products. The
kernels of ``csrc/`` do such work in one pass, in place; a GRU layer's step, products
included, is one call each way, bpr-max's loss is one call, a whole GRU4Rec step with the
cross-entropy is one call (``_fused_step.py``), and evaluation counts ranks without a
comparison matrix (GRU4Rec and HRNN: without a score matrix; GRU4Rec's walk computes the
state of each distinct session prefix once, ``_fused_walk.py``). ``pip install`` compiles them
where a C compiler is found (``setup.py``; the extension is optional), and they are then
used for float32 tensors on the CPU; the GPU, other dtypes, or an installation without
the library run the PyTorch code they replace, which computes the same values up to
rounding.

Set the environment variable ``SESSIONREC_FUSED=0`` before importing sessionrec, or use
:func:`disabled`, to run the PyTorch code on the CPU too.

The kernels run on as many threads as PyTorch's intra-op setting
(``torch.set_num_threads``) where the library shares torch's OpenMP thread pool (Linux
builds; see the head of ``csrc/``), on one thread otherwise. Their results do not
depend on the number of threads.

Why C through ``ctypes`` rather than a JIT compiler such as numba: numba's LLVM added
about 200 MB to the resident memory of a fit, a third of the memory budget of a
GRU4Rec training run, for the same speed.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import os
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["available", "disabled", "fused_for", "enabled_for", "sparse_adagrad_",
           "dense_adagrad_", "unique_rows_marked", "output_cross_entropy", "gru_step",
           "gru_step_backward", "rank_counts", "product_ranks", "bpr_max", "Gru4recStep",
           "prefix_tree", "gru_tree_walk", "threads"]


_P, _I64 = ctypes.c_void_p, ctypes.c_int64


def _openmp_runtimes() -> set[str]:
    """Files of the OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as maps:
            names = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return set()
    return {name for name in names
            if Path(name).name.startswith(("libgomp", "libomp", "libiomp"))}


def _warn_unusable(path, why: str) -> None:
    warnings.warn(f"sessionrec: the C kernels in {path} do not match this version of "
                  f"sessionrec ({why}); the PyTorch code runs instead. Reinstall sessionrec "
                  "(pip install -e . in a checkout) to rebuild them.", RuntimeWarning,
                  stacklevel=4)


def _layout_mismatch(library) -> str | None:
    """Why a ctypes mirror of the C structures (:data:`_MIRRORS`) does not match the
    library's, or None: the library reports each structure's size and each field's
    offset (``sr_struct_layout``)."""
    for which, mirror in enumerate(_MIRRORS):
        expected = [ctypes.sizeof(mirror)] + [getattr(mirror, name).offset
                                              for name, _ in mirror._fields_]
        out = (ctypes.c_int64 * (len(expected) + 1))()
        n = library.sr_struct_layout(which, out, len(expected) + 1)
        reported = list(out[:max(n, 0)])
        if reported != expected:
            return (f"{mirror._c_name} has size and offsets {reported}, the Python mirror "
                    f"{expected}")
    return None


def _load():
    """The library, and whether it runs its kernels in PyTorch's OpenMP thread pool."""
    folder = Path(__file__).resolve().parent
    runtimes = _openmp_runtimes()
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = folder / f"_fused{suffix}"
        if path.exists():
            try:
                library = ctypes.CDLL(str(path))
            except OSError:  # pragma: no cover - a library built for another machine
                return None, False
            break
    else:  # pragma: no cover - installed without a C compiler
        return None, False
    p, i64, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
    signatures = {  # name: (argument types, result type)
        "sr_openmp": ([], ctypes.c_int),
        "sr_sparse_adagrad_f32": ([p, i64, i64, i64, p, i64, p, p, f32, f32, i64], None),
        "sr_dense_adagrad_f32": ([p, p, p, p, i64, f32, f32, i64], None),
        "sr_unique_marked_scratch": ([i64], i64),
        "sr_unique_marked": ([p, i64, i64, p, p, p], i64),
        "sr_gru_state_floats": ([i64, i64, i64], i64),
        "sr_gru_backward_work_floats": ([i64, i64], i64),
        "sr_gru_step_f32": ([p], None),
        "sr_gru_step_backward_f32": ([p], None),
        "sr_output_xent_scratch": ([i64, i64, i64], i64),
        "sr_output_xent_f32": ([p, i64, i64, i64, p, p, i64, p, i64, p, p, p, p, i64],
                               ctypes.c_double),
        "sr_rank_counts_f32": ([p, i64, i64, i64, p, p, p, i64], i64),
        "sr_product_ranks_scratch": ([i64, i64, i64, i64, i64, i64, p], i64),
        "sr_product_ranks_f32": ([p, i64, i64, i64, p, i64, p, p, i64, p, p, p, p, p, i64],
                                 i64),
        "sr_linear_f32": ([p, i64, i64, i64, p, i64, p, p, i64], None),
        "sr_packed_strip_floats": ([i64, i64], i64),
        "sr_pack_strips_f32": ([p, i64, i64, p, i64], None),
        "sr_product_topk_scratch": ([i64, i64, i64], i64),
        "sr_product_topk_f32": ([p, i64, i64, i64, p, i64, i64, p, p, p, p, p, i64], i64),
        "sr_int8_topk_available": ([], i64),
        "sr_int8_strips_bytes": ([i64, i64], i64),
        "sr_int8_meta_floats": ([i64], i64),
        "sr_pack_int8_strips": ([p, i64, i64, p, p, p, i64], None),
        "sr_int8_topk_scratch": ([i64, i64, i64, i64, i64], i64),
        "sr_int8_topk_f32": ([p, i64, i64, i64, p, p, p, i64, i64, p, p, p, p, p, p, i64],
                             i64),
        "sr_prefix_tree_scratch": ([i64], i64),
        "sr_prefix_tree": ([p, p, i64, i64, p, p, p, p, p, p], i64),
        "sr_gru_tree_walk_scratch": ([i64, p, i64], i64),
        "sr_gru_tree_walk_f32": ([i64, p, p, p, p, p, i64, p, i64, p, p, p, i64, p, i64], i64),
        "sr_gru4rec_step_scratch": ([p, p], i64),
        "sr_gru4rec_step_init": ([p], None),
        "sr_bpr_max_scratch": ([i64, i64], i64),
        "sr_bpr_max_f32": ([p, i64, i64, i64, p, i64, p, f32, i64, f32, p, p, p, i64], None),
        "sr_gru4rec_step_f32": ([p, i64, p, p, p, p, p, p, p, p], i64),
        "sr_struct_layout": ([i64, p, i64], i64),
    }  # the kernels' last argument (not sr_unique_marked's): the number of threads; the
    # functions that take one pointer take a structure mirrored below (_MIRRORS)
    for name, (arguments, result) in signatures.items():
        function = getattr(library, name, None)
        if function is None:  # a library from another version of sessionrec
            _warn_unusable(path, f"it has no function {name}")
            return None, False
        function.argtypes, function.restype = arguments, result
    mismatch = _layout_mismatch(library)
    if mismatch:
        _warn_unusable(path, mismatch)
        return None, False
    # The library shares torch's pool when loading it mapped no OpenMP runtime of its own
    # (torch's libgomp.so.1, already loaded, satisfied its dependency). With a second
    # runtime (a torch build whose libgomp has another name), two pools of busy-waiting
    # threads would compete for the same cores: the kernels then run on one thread.
    shared = bool(library.sr_openmp()) and _openmp_runtimes() == runtimes
    return library, shared


# Loaded on first use, not at import: `import sessionrec` maps no C library, and the
# evaluation engine imports this module without loading anything.
_load_lock = threading.Lock()
_loaded = False
_library = None
_parallel = False
_enabled: bool | None = None  # None: not decided yet (see available)


def _ensure_loaded() -> None:
    global _loaded, _library, _parallel
    if _loaded:
        return
    with _load_lock:
        if not _loaded:
            _library, _parallel = _load()
            _loaded = True


def built() -> bool:
    """Whether the C library was built (a file next to this module), without loading it.

    Examples
    --------
    >>> built() in (True, False)
    True
    """
    folder = Path(__file__).resolve().parent
    return any((folder / f"_fused{suffix}").exists()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def threads() -> int:
    """Threads the kernels may use: PyTorch's intra-op setting, when the pool is shared."""
    _ensure_loaded()
    return torch.get_num_threads() if _parallel else 1


def available() -> bool:
    """Whether the fused CPU kernels are in use (the library was built, loads, and was
    not turned off by ``SESSIONREC_FUSED=0`` or :func:`disabled`). The first call loads
    the library."""
    global _enabled
    if _enabled is None:
        if os.environ.get("SESSIONREC_FUSED", "1") == "0":
            _enabled = False
        else:
            _ensure_loaded()
            _enabled = _library is not None
    return _enabled


def fused_for(device, dtype: torch.dtype = torch.float32) -> bool:
    """The one rule that picks the backend: whether the fused kernels run for tensors of
    ``dtype`` on ``device`` (float32 on the CPU, with the kernels in use).

    A model applies it once per fit (the optimiser it makes carries the decision to
    every table and step of the run) and once per evaluation walk (the network's
    ``walk_context``), so that :func:`disabled` affects the fits and walks started
    inside it.

    Examples
    --------
    >>> fused_for("cpu", torch.float64)
    False
    """
    return torch.device(device).type == "cpu" and dtype == torch.float32 and available()


def enabled_for(tensor: torch.Tensor) -> bool:
    """:func:`fused_for` of ``tensor``'s device and dtype."""
    return fused_for(tensor.device, tensor.dtype)


@contextlib.contextmanager
def disabled():
    """Run the PyTorch implementations on the CPU too, inside the ``with`` block.

    For comparing the two paths; the GPU always runs the PyTorch code.

    Examples
    --------
    >>> from sessionrec._native import kernels as _kernels
    >>> with _kernels.disabled():
    ...     _kernels.available()
    False
    """
    global _enabled
    available()  # decided first, so that leaving the block restores the decision
    before = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = before


def _pointer(tensor: torch.Tensor | None) -> int | None:
    return None if tensor is None else tensor.data_ptr()


def sparse_adagrad_(buffer: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor,
                    keep_last: torch.Tensor | None, lr: float, momentum: float) -> None:
    """Adagrad-with-momentum step on rows of a packed table, in place.

    ``buffer`` holds planes ``[param, acc(, mom)]`` (planes x n x width, contiguous
    float32), ``rows`` the distinct rows to update (int64), ``grad`` (len(rows) x width)
    their merged gradient, ``keep_last`` (bool per row, or None) the rows whose last
    column must not change. Same rule as :meth:`AdagradMomentum.rows_step`.
    """
    n_planes, n_rows, width = buffer.shape
    rows, grad = _input(rows, torch.int64), _input(grad, torch.float32)
    keep = None if keep_last is None else _input(keep_last, torch.bool)
    _library.sr_sparse_adagrad_f32(_output(buffer).data_ptr(), n_planes, n_rows * width,
                                   width, rows.data_ptr(), len(rows), grad.data_ptr(),
                                   _pointer(keep), lr, momentum, threads())


def dense_adagrad_(param: torch.Tensor, grad: torch.Tensor, acc: torch.Tensor,
                   mom: torch.Tensor | None, lr: float, momentum: float) -> None:
    """Adagrad-with-momentum step on every element of the flat, contiguous ``param``."""
    _library.sr_dense_adagrad_f32(_output(param).data_ptr(),
                                  _input(grad, torch.float32).data_ptr(),
                                  _output(acc).data_ptr(),
                                  _pointer(mom if mom is None else _output(mom)),
                                  param.numel(), lr, momentum, threads())


def unique_rows_marked(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted distinct values of ``rows`` (int64, all in ``[0, n_rows)``) and each
    element's position among them, as ``torch.unique(rows, return_inverse=True)`` gives,
    in linear time."""
    rows = rows.contiguous()
    n = len(rows)
    # One allocation: the outputs, then the scratch the library asks for.
    buffer = torch.empty(2 * n + _library.sr_unique_marked_scratch(n_rows),
                         dtype=torch.int64)
    distinct, inverse = buffer[:n], buffer[n:2 * n]
    count = _library.sr_unique_marked(rows.data_ptr(), n, n_rows, buffer[2 * n:].data_ptr(),
                                      distinct.data_ptr(), inverse.data_ptr())
    if count < 0:
        raise IndexError(f"a row index lies outside [0, {n_rows})")
    return distinct[:count], inverse


def output_cross_entropy(h: torch.Tensor, table: torch.Tensor, row_index: torch.Tensor,
                         column_of: torch.Tensor, score_shift: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The output layer of a linear cross-entropy step, products included.

    ``h`` (B x H) is the last layer's output; ``table`` (rows of H + 1, contiguous) holds
    the items' ``[W_u | b_u]``, read in place; ``row_index`` (int64, every entry a row of
    ``table``) the U distinct items; ``column_of`` (int64) the distinct item of each
    column (the rows' targets first, then the samples); ``score_shift`` the columns'
    logQ corrections or None. Returns the loss summed over rows (0-d float32, in the
    columns' space: ``sum_i logsumexp_j(r_ij + s_j) - (r_i,target + s_i)``), the
    gradient of the mean loss for the distinct items' rows (U x (H + 1)) and for ``h``
    (B x H): what scoring ``[h | 1] rows^T``,
    :func:`~sessionrec.nn._losses.cross_entropy_distinct` and the two gradient products
    give, up to rounding.
    """
    h = _rows(h)
    batch, size = h.shape
    n_items = len(row_index)
    if table.shape[1] != size + 1:
        raise ValueError(f"table rows have {table.shape[1]} columns, expected {size + 1}")
    table = _dense(table)
    row_index, column_of = _input(row_index, torch.int64), _input(column_of, torch.int64)
    shift = None if score_shift is None else _input(score_shift, torch.float32)
    out_grad = torch.empty(n_items, size + 1)
    d_h = torch.empty(batch, size)
    scratch = torch.empty(_library.sr_output_xent_scratch(batch, size, n_items))
    loss = _library.sr_output_xent_f32(h.data_ptr(), batch, size, h.stride(0),
                                       table.data_ptr(), row_index.data_ptr(), n_items,
                                       column_of.data_ptr(), len(column_of), _pointer(shift),
                                       out_grad.data_ptr(), d_h.data_ptr(),
                                       scratch.data_ptr(), threads())
    return torch.full((), loss), out_grad, d_h


def _input(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An input the kernels read as one block of ``dtype`` (converted only if need be:
    ``Tensor.to`` costs microseconds even when it has nothing to do)."""
    if tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor if tensor.is_contiguous() else tensor.contiguous()


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    # The kernels walk rows with a stride but need each row's elements adjacent.
    return tensor if tensor.stride(1) == 1 else tensor.contiguous()


def _dense(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """An input the kernels read as one block (a copy only if it is not one already)."""
    return None if tensor is None else tensor.contiguous()


def _output(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor the kernels write in place: a copy would lose the result."""
    if not tensor.is_contiguous() or tensor.dtype != torch.float32:
        raise ValueError("the fused kernels write into contiguous float32 tensors only")
    return tensor


class GruStepArgs(ctypes.Structure):
    """The C ``GruStepArgs`` (``csrc/kernels.h``): the arguments of one GRU step."""

    _c_name = "GruStepArgs"
    _fields_ = [("B", _I64), ("I", _I64), ("H", _I64), ("x", _P), ("ldx", _I64),
                ("wx", _P), ("b", _P), ("gi", _P), ("ldgi", _I64), ("h", _P),
                ("ldh", _I64), ("wrz", _P), ("wh", _P), ("bh", _P), ("mask", _P),
                ("reset_after", _I64), ("n_threads", _I64), ("state", _P), ("out", _P)]


class GruBackwardArgs(ctypes.Structure):
    """The C ``GruBackwardArgs``: the arguments of a GRU step's backward step."""

    _c_name = "GruBackwardArgs"
    _fields_ = [("B", _I64), ("I", _I64), ("H", _I64), ("dh", _P), ("lddh", _I64),
                ("mask", _P), ("state", _P), ("h", _P), ("ldh", _I64), ("x", _P),
                ("ldx", _I64), ("wx", _P), ("wh", _P), ("reset_after", _I64),
                ("n_threads", _I64), ("dgi", _P), ("work", _P), ("dwx", _P), ("db", _P),
                ("dwrz", _P), ("dwh", _P), ("dbh", _P), ("dx", _P)]


class GruStepState:
    """What a fused GRU step keeps for its backward pass: a buffer laid out by the C
    library (``csrc/kernels.h``), opaque here, with the step's shape and GRU."""

    __slots__ = ("buffer", "batch", "size", "reset_after")

    def __init__(self, buffer: torch.Tensor, batch: int, size: int, reset_after: bool):
        self.buffer, self.batch, self.size = buffer, batch, size
        self.reset_after = reset_after


def gru_step(h: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor,
             b_h: torch.Tensor | None, *, gi: torch.Tensor | None = None,
             x: torch.Tensor | None = None, w_x: torch.Tensor | None = None,
             b: torch.Tensor | None = None, reset_after: bool = False,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, GruStepState]:
    """One GRU step, products included (see :func:`~sessionrec.nn._layers.gru_forward`).

    The gate inputs are ``gi`` (B x 3H) or ``x W_x + b`` for the layer input ``x``
    (B x I). Returns ``(h_new, state)``: the new state, and what
    :func:`gru_step_backward` needs, in one buffer the C library lays out. One buffer
    rather than three tensors: on a small step, making each view of a buffer costs
    about as much as the kernel's element-wise work.
    """
    h = _rows(h)
    batch, size = h.shape
    if w_rz.shape != (size, 2 * size) or w_h.shape != (size, size):
        raise ValueError(f"GRU weights of shapes {tuple(w_rz.shape)} and "
                         f"{tuple(w_h.shape)} do not fit {size} units")
    args = GruStepArgs(B=batch, H=size, h=h.data_ptr(), ldh=h.stride(0),
                       wrz=_dense(w_rz).data_ptr(), wh=_dense(w_h).data_ptr(),
                       bh=_pointer(_dense(b_h)), mask=_pointer(_dense(mask)),
                       reset_after=int(reset_after), n_threads=threads())
    if x is not None:
        x = _rows(x)
        n_in = x.shape[1]
        if w_x.shape != (n_in, 3 * size) or b.shape != (3 * size,):
            raise ValueError(f"input weights of shape {tuple(w_x.shape)} do not fit "
                             f"{n_in} inputs and {size} units")
        w_x, b = _dense(w_x), _dense(b)
        args.I, args.x, args.ldx = n_in, x.data_ptr(), x.stride(0)
        args.wx, args.b = w_x.data_ptr(), b.data_ptr()
    elif gi is None or gi.shape != (batch, 3 * size):
        raise ValueError(f"the gate inputs must be {batch} x {3 * size}")
    else:
        gi = _rows(gi)
        args.gi, args.ldgi = gi.data_ptr(), gi.stride(0)
    state = torch.empty(_library.sr_gru_state_floats(batch, size, int(x is not None)))
    out = torch.empty(batch, size)
    args.state, args.out = state.data_ptr(), out.data_ptr()
    _library.sr_gru_step_f32(ctypes.byref(args))
    return out, GruStepState(state, batch, size, bool(reset_after))


def gru_step_backward(dh: torch.Tensor, mask: torch.Tensor | None, state: GruStepState,
                      h: torch.Tensor, w_h: torch.Tensor, dw_rz: torch.Tensor,
                      dw_h: torch.Tensor, *, db: torch.Tensor | None = None,
                      db_h: torch.Tensor | None = None, x: torch.Tensor | None = None,
                      w_x: torch.Tensor | None = None, dw_x: torch.Tensor | None = None,
                      need_dx: bool = False, need_dgi: bool = True):
    """Gradients of one GRU step (no step back in time), products included.

    ``dh`` is the gradient of the step's output (before its dropout ``mask``), ``state``
    and ``h`` those of the :func:`gru_step` that made it. Writes the weight gradients
    ``dw_rz``, ``dw_h`` and, where given, ``db``, ``db_h`` and ``dw_x = x^T dgi``; returns
    ``(dgi, dx)``: the gradient of the gate inputs (B x 3H) if ``need_dgi`` and, with
    ``need_dx``, that of the layer input, ``dgi W_x^T`` (else None each).
    """
    dh, h = _rows(dh), _rows(h)
    batch, size = h.shape
    if not isinstance(state, GruStepState) or (state.batch, state.size) != (batch, size):
        raise ValueError("state must come from gru_step on the same batch")
    n_in = 0 if w_x is None else w_x.shape[0]
    if x is not None:
        x = _rows(x)
    if (dw_x is not None and x is None) or (need_dx and w_x is None):
        raise ValueError("dw_x needs the layer input x, and dx its weights w_x")
    dgi = torch.empty(batch, 3 * size)
    work = torch.empty(_library.sr_gru_backward_work_floats(batch, size))
    dx = torch.empty(batch, n_in) if need_dx else None
    args = GruBackwardArgs(
        B=batch, I=n_in, H=size, dh=dh.data_ptr(), lddh=dh.stride(0),
        mask=_pointer(_dense(mask)), state=state.buffer.data_ptr(), h=h.data_ptr(),
        ldh=h.stride(0), x=_pointer(x), ldx=0 if x is None else x.stride(0),
        wx=_pointer(_dense(w_x)), wh=_dense(w_h).data_ptr(),
        reset_after=int(state.reset_after), n_threads=threads(), dgi=dgi.data_ptr(),
        work=work.data_ptr(), dwx=_pointer(dw_x if dw_x is None else _output(dw_x)),
        db=_pointer(db if db is None else _output(db)), dwrz=_output(dw_rz).data_ptr(),
        dwh=_output(dw_h).data_ptr(), dbh=_pointer(db_h if db_h is None else _output(db_h)),
        dx=_pointer(dx))
    _library.sr_gru_step_backward_f32(ctypes.byref(args))
    return (dgi if need_dgi else None), dx


def rank_counts(scores: torch.Tensor, targets: torch.Tensor, strict: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """For each row of ``scores`` (float32, n_rows x n_items), the number of items whose
    score is >= that of the row's ``targets`` column and, with ``strict``, the number
    whose score is > it (else None): float64 counts, in one pass over the scores and
    without the boolean matrix a comparison would write. NaN scores never count."""
    scores = _rows(scores)
    n_rows, n_items = scores.shape
    targets = _input(targets, torch.int64)
    counts = torch.empty(2 if strict else 1, n_rows, dtype=torch.float64)
    status = _library.sr_rank_counts_f32(
        scores.data_ptr(), n_rows, n_items, scores.stride(0), targets.data_ptr(),
        counts.data_ptr(), counts[1].data_ptr() if strict else None, threads())
    if status < 0:
        raise IndexError(f"a target column lies outside [0, {n_items})")
    return counts[0], (counts[1] if strict else None)


def product_ranks(h: torch.Tensor, matrix: torch.Tensor, targets: torch.Tensor,
                  strict: bool, rows: torch.Tensor | None = None):
    """:func:`rank_counts` of the scores ``[h | 1] matrix``, without the score matrix.

    ``h`` (float32, n_rows x K), ``matrix`` ((K + 1) x n_items, contiguous: the items'
    weights, then their biases in the last row). ``targets``: the target item of each
    row of ``h``, or with ``rows`` (int64, one per target) of row ``rows[i]``. The scores
    are computed 32 rows at a time and counted, for each target of the row, while they
    are in the cache. Without ``rows``, rows of ``h`` equal bit for bit share one
    computation. Returns ``(at_least, above, scores)``: per target, the counts (``above``
    None unless ``strict``) and its score.
    """
    h = _rows(h)
    n_rows, size = h.shape
    if matrix.shape[0] != size + 1:
        raise ValueError(f"matrix has {matrix.shape[0]} rows, expected {size + 1}")
    matrix = _dense(matrix)
    n_items = matrix.shape[1]
    targets = _input(targets, torch.int64)
    n_targets = len(targets)
    if rows is None and n_targets != n_rows:
        raise ValueError(f"{n_targets} targets for {n_rows} rows")
    if rows is not None:
        rows = _input(rows, torch.int64)
        if len(rows) != n_targets:
            raise ValueError(f"{len(rows)} rows for {n_targets} targets")
    n_threads = threads()
    counts = torch.empty(2 if strict else 1, n_targets, dtype=torch.float64)
    target_scores = torch.empty(n_targets)
    n_index = ctypes.c_int64()
    scratch = torch.empty(_library.sr_product_ranks_scratch(
        n_rows, size, n_items, n_targets, int(rows is not None), n_threads,
        ctypes.byref(n_index)))
    index = torch.empty(n_index.value, dtype=torch.int64)
    status = _library.sr_product_ranks_f32(
        h.data_ptr(), n_rows, size, h.stride(0), matrix.data_ptr(), n_items,
        targets.data_ptr(), _pointer(rows), n_targets, counts.data_ptr(),
        counts[1].data_ptr() if strict else None, target_scores.data_ptr(),
        scratch.data_ptr(), index.data_ptr(), n_threads)
    if status < 0:
        raise IndexError(f"a target lies outside [0, {n_items}) or a row outside "
                         f"[0, {n_rows})")
    return counts[0], (counts[1] if strict else None), target_scores


def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``x w + b`` (float32; ``x``: M x K, ``w``: K x N, ``b``: N or None), each row bit
    for bit what a fused GRU step computes as its gate inputs for that row alone."""
    _ensure_loaded()
    x, w = _rows(_input(x, torch.float32)), _dense(_input(w, torch.float32))
    b = None if b is None else _dense(_input(b, torch.float32))
    out = torch.empty(x.shape[0], w.shape[1])
    _library.sr_linear_f32(x.data_ptr(), x.shape[0], x.shape[1], x.stride(0), w.data_ptr(),
                           w.shape[1], _pointer(b), out.data_ptr(), threads())
    return out


class PackedScores:
    """An output table ``[W | b]`` ((K + 1) x n_items) packed for :func:`product_topk`:
    strips of 64 items, each strip's K + 1 rows contiguous, so that scoring a row streams
    through memory once. Packing costs one copy of the table; keep the object for as
    long as the weights stay the same."""

    def __init__(self, matrix: torch.Tensor):
        _ensure_loaded()
        matrix = _dense(matrix)
        if matrix.dtype != torch.float32 or matrix.dim() != 2:
            raise ValueError("matrix must be a 2-d float32 tensor")
        self.width, self.n_items = matrix.shape[0] - 1, matrix.shape[1]
        self.buffer = torch.empty(_library.sr_packed_strip_floats(matrix.shape[0],
                                                                  self.n_items))
        _library.sr_pack_strips_f32(matrix.data_ptr(), matrix.shape[0], self.n_items,
                                    self.buffer.data_ptr(), threads())


def product_topk(h: torch.Tensor, packed: PackedScores, k: int,
                 exclude: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items of every row's scores ``[h | 1] [W | b]`` (``packed``), best
    first, ties by lower item; NaN scores count as -inf. No score matrix is written.

    Each score is the chain of :func:`product_ranks` (the same values bit for bit),
    whatever the number of rows or threads. ``exclude``: ``(offsets, items)``, int64, row
    ``r``'s items ``items[offsets[r]:offsets[r + 1]]`` (sorted, distinct) score -inf.
    Returns ``(items, scores)``: int64 and float32 tensors of shape (rows, k).
    """
    h = _rows(_input(h, torch.float32) if h.dtype != torch.float32 else h)
    n_rows, size = h.shape
    if size != packed.width:
        raise ValueError(f"h has {size} columns, the table {packed.width}")
    items = torch.empty(n_rows, k, dtype=torch.int64)
    scores = torch.empty(n_rows, k)
    if n_rows == 0:
        return items, scores
    offsets = values = None
    if exclude is not None:
        offsets, values = (_input(t, torch.int64) for t in exclude)
    n_threads = threads()
    scratch = torch.empty(_library.sr_product_topk_scratch(n_rows, k, n_threads))
    status = _library.sr_product_topk_f32(
        h.data_ptr(), n_rows, size, h.stride(0), packed.buffer.data_ptr(), packed.n_items,
        k, _pointer(offsets), _pointer(values), items.data_ptr(), scores.data_ptr(),
        scratch.data_ptr(), n_threads)
    if status == -1:
        raise ValueError(f"k={k} is outside [1, {packed.n_items}]")
    if status < 0:  # pragma: no cover - out of memory
        raise MemoryError("product_topk could not allocate its heaps")
    return items, scores


def int8_topk_available() -> bool:
    """Whether :func:`int8_topk` runs its int8 kernel here (the library built with it and
    a processor with AVX512-VNNI); elsewhere it is :func:`product_topk`."""
    _ensure_loaded()
    return _library is not None and bool(_library.sr_int8_topk_available())


class Int8Scores:
    """An output table ``[W | b]`` prepared for :func:`int8_topk`: each item's weights in
    int8 with its own scale, an item-major float copy for exact rescoring, and the exact
    :class:`PackedScores` for the rows the bounds cannot decide."""

    # Lists longer than this are left to product_topk (csrc/bounded_topk.c's BOUND_CAP).
    MAX_K = 4096

    def __init__(self, matrix: torch.Tensor, exact: PackedScores | None = None):
        _ensure_loaded()
        matrix = _dense(matrix)
        self.exact = PackedScores(matrix) if exact is None else exact
        self.width, self.n_items = matrix.shape[0] - 1, matrix.shape[1]
        # Infinite or NaN weights have no bound: every row goes to product_topk.
        self.usable = bool(torch.isfinite(matrix).all())
        k1, n = matrix.shape
        self.strips = torch.empty(_library.sr_int8_strips_bytes(k1 - 1, n), dtype=torch.int8)
        self.rows = torch.empty(n, k1)
        self.meta = torch.empty(_library.sr_int8_meta_floats(n))
        _library.sr_pack_int8_strips(matrix.data_ptr(), k1, n, self.strips.data_ptr(),
                                     self.rows.data_ptr(), self.meta.data_ptr(), threads())


def int8_topk(h: torch.Tensor, table: Int8Scores, k: int,
              exclude: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`product_topk`'s lists and scores, bit for bit, from int8 approximations.

    Each row's scores are first summed in int8 (AVX512-VNNI: a quarter of the memory
    traffic of the float table and a sixteenth of the instructions), each item's error
    bounded, and only the items that the bounds cannot rule out are scored exactly, by
    :func:`product_topk`'s own chain (``csrc/bounded_topk.c``). Rows the bounds cannot
    decide, and every row where the kernel cannot run, go to :func:`product_topk`.
    """
    h = _rows(_input(h, torch.float32) if h.dtype != torch.float32 else h)
    n_rows, size = h.shape
    if size != table.width:
        raise ValueError(f"h has {size} columns, the table {table.width}")
    if not 1 <= k <= table.n_items:
        raise ValueError(f"k={k} is outside [1, {table.n_items}]")
    if k > table.MAX_K or n_rows == 0 or not table.usable or not int8_topk_available():
        return product_topk(h, table.exact, k, exclude)
    items = torch.empty(n_rows, k, dtype=torch.int64)
    scores = torch.empty(n_rows, k)
    offsets = values = None
    if exclude is not None:
        offsets, values = (_input(t, torch.int64) for t in exclude)
    fallback = torch.empty(n_rows, dtype=torch.int64)
    n_threads = threads()
    scratch = torch.empty(_library.sr_int8_topk_scratch(n_rows, table.n_items, size, k,
                                                        n_threads), dtype=torch.uint8)
    status = _library.sr_int8_topk_f32(
        h.data_ptr(), n_rows, size, h.stride(0), table.strips.data_ptr(),
        table.rows.data_ptr(), table.meta.data_ptr(), table.n_items, k, _pointer(offsets),
        _pointer(values), items.data_ptr(), scores.data_ptr(), fallback.data_ptr(),
        scratch.data_ptr(), n_threads)
    if status < 0:  # pragma: no cover - checked above
        return product_topk(h, table.exact, k, exclude)
    undecided = np.flatnonzero(fallback.numpy())
    if len(undecided):
        undecided = torch.from_numpy(undecided)
        sub = None
        if exclude is not None:
            from .._topk import select_exclusions  # noqa: PLC0415 - a rare path

            sub = select_exclusions(exclude, undecided)
        items[undecided], scores[undecided] = product_topk(h[undecided], table.exact, k, sub)
    return items, scores


def prefix_tree(items: torch.Tensor, offsets: torch.Tensor, first: int, stop: int):
    """The distinct prefixes of sessions ``first:stop`` (session ``s`` holds
    ``items[offsets[s]:offsets[s + 1]]``, both int64 and contiguous), every event but a
    session's last ending one, numbered level by level (level ``L``: the prefixes of
    ``L + 1`` items).

    Returns ``(node_of, parent, item, level_offsets)``: each prefix's node (in event
    order), each node's parent (its prefix without its last item; -1 on level 0) and last
    item, and the bounds of the levels' nodes.
    """
    lengths = offsets[first + 1:stop + 1] - offsets[first:stop]
    n_fed = int((lengths - 1).clamp(min=0).sum())  # a session may be empty
    node_of = torch.empty(n_fed, dtype=torch.int64)
    parent = torch.empty(n_fed, dtype=torch.int64)
    item = torch.empty(n_fed, dtype=torch.int64)
    level_offsets = torch.empty(max(int(lengths.max()) if len(lengths) else 0, 1),
                                dtype=torch.int64)
    index = torch.empty(_library.sr_prefix_tree_scratch(n_fed), dtype=torch.int64)
    n_levels = ctypes.c_int64()
    n_nodes = _library.sr_prefix_tree(
        items.data_ptr(), offsets.data_ptr(), first, stop, node_of.data_ptr(),
        parent.data_ptr(), item.data_ptr(), level_offsets.data_ptr(), ctypes.byref(n_levels),
        index.data_ptr())
    return node_of, parent[:n_nodes], item[:n_nodes], level_offsets[:n_levels.value + 1]


def bpr_max(scores: torch.Tensor, column_of: torch.Tensor, score_shift: torch.Tensor | None,
            bpreg: float, elu: bool, elu_param: float) -> tuple[torch.Tensor, torch.Tensor]:
    """bpr-max over a step's columns, from the scores of its distinct items.

    ``scores`` (B x U) holds the batch's scores of the step's U distinct items,
    ``column_of`` (int64, N >= B) the distinct item of each column (column i is row i's
    target), ``score_shift`` (N, or None) a shift added to the columns' scores. Returns
    the loss summed over rows (0-d float32) and the gradient of the mean loss for
    ``scores`` (B x U): what :func:`~sessionrec.nn._losses.bpr_max_closed_form` on the
    columns' scores (with the ELU when ``elu``) and a sum of its columns onto their items
    give, up to rounding.
    """
    scores = _rows(scores)
    batch, n_items = scores.shape
    column_of = _input(column_of, torch.int64)
    n_cols = len(column_of)
    if n_cols < max(batch, 2):
        raise ValueError(f"bpr-max needs at least {max(batch, 2)} columns, got {n_cols}")
    shift = None if score_shift is None else _input(score_shift, torch.float32)
    n_threads = threads()
    d_distinct = torch.empty(batch, n_items)
    row_loss = torch.empty(batch, dtype=torch.float64)
    work = torch.empty(_library.sr_bpr_max_scratch(n_cols, n_threads))
    _library.sr_bpr_max_f32(scores.data_ptr(), batch, n_items, scores.stride(0),
                            column_of.data_ptr(), n_cols, _pointer(shift), bpreg, int(elu),
                            elu_param, d_distinct.data_ptr(), row_loss.data_ptr(),
                            work.data_ptr(), n_threads)
    return row_loss.sum().float(), d_distinct


class Gru4recStepPlan(ctypes.Structure):
    """The C ``Gru4recStep``: what a whole GRU4Rec training step reads besides the step's
    own inputs (addresses of the network's buffers and of scratch; ``csrc/kernels.h``)."""

    _c_name = "Gru4recStep"
    _fields_ = [(name, _I64) for name in (
        "n_items", "n_layers", "n_sample", "samples_int32", "max_batch", "n_threads")]
    _fields_ += [("sizes", _P), ("layout", _P), ("reset_after", _P), ("table", _P),
                 ("n_planes", _I64), ("plane_stride", _I64), ("dense", _P), ("grad", _P),
                 ("acc", _P), ("mom", _P), ("n_dense", _I64), ("shift_batch", _P),
                 ("shift_sample", _P), ("lr", ctypes.c_double),
                 ("momentum", ctypes.c_double), ("index", _P), ("work", _P),
                 ("input_mode", _I64), ("in_table", _P),
                 ("in_planes", _I64), ("in_plane_stride", _I64), ("in_width", _I64)]


# The structures Python fills, in the order of sr_struct_layout's ``which``.
_MIRRORS = (Gru4recStepPlan, GruStepArgs, GruBackwardArgs)

# The input modes of a GRU4Rec step (GRU4RecNetwork.input_mode): the output rows, a
# table of embeddings, or a table of the first layer's gate inputs.
_INPUT_MODES = {"constrained": 0, "embedding": 1, "onehot": 2}


class Gru4recStep:
    """Whole GRU4Rec training steps with the linear cross-entropy, one C call each
    (``sr_gru4rec_step_f32``; see ``nn/_fused_step.py`` for what it computes).

    Everything a step reads besides its own mini-batch is given once: the layers
    (``sizes``, ``layout`` as ``GRU4RecNetwork.layer_layout`` gives it, ``reset_after``),
    the packed item tables ``table`` and ``in_table`` (planes x rows x width; None for the
    constrained input), the flat weights ``dense`` with their gradient ``grad`` and
    Adagrad state ``acc``, ``mom``, the logQ shifts (or None), the optimiser's settings,
    and the whole schedule's ``items``, ``targets`` (int64) and ``keep`` flags (float32, 0
    where a session starts). The C library sizes and lays out the scratch; the tensors
    given are kept alive for as long as this object is.
    """

    def __init__(self, *, n_items: int, sizes: torch.Tensor, layout: torch.Tensor,
                 reset_after: torch.Tensor, input_mode: str, table: torch.Tensor,
                 in_table: torch.Tensor | None, dense: torch.Tensor, grad: torch.Tensor,
                 acc: torch.Tensor, mom: torch.Tensor | None, lr: float, momentum: float,
                 n_sample: int, samples_int32: bool, max_batch: int,
                 shift_batch: torch.Tensor | None, shift_sample: torch.Tensor | None,
                 items: torch.Tensor, targets: torch.Tensor, keep: torch.Tensor):
        kept = {"sizes": _input(sizes, torch.int64), "layout": _input(layout, torch.int64),
                "reset_after": _input(reset_after, torch.int64),
                "shift_batch": _dense(shift_batch), "shift_sample": _dense(shift_sample),
                "items": _input(items, torch.int64), "targets": _input(targets, torch.int64),
                "keep": _input(keep, torch.float32), "table": _output(table),
                "dense": _output(dense), "grad": _output(grad), "acc": _output(acc),
                "mom": None if mom is None else _output(mom)}
        n_layers = len(kept["sizes"])
        plan = Gru4recStepPlan(
            n_items=n_items, n_layers=n_layers, n_sample=n_sample,
            samples_int32=int(samples_int32), max_batch=int(max_batch), n_threads=threads(),
            sizes=kept["sizes"].data_ptr(), layout=kept["layout"].data_ptr(),
            reset_after=kept["reset_after"].data_ptr(), table=table.data_ptr(),
            n_planes=table.shape[0], plane_stride=table.shape[1] * table.shape[2],
            dense=dense.data_ptr(), grad=grad.data_ptr(), acc=acc.data_ptr(),
            mom=_pointer(mom), n_dense=dense.numel(),
            shift_batch=_pointer(kept["shift_batch"]),
            shift_sample=_pointer(kept["shift_sample"]), lr=lr, momentum=momentum,
            input_mode=_INPUT_MODES[input_mode])
        if in_table is not None:
            kept["in_table"] = _output(in_table)
            plan.in_table, plan.in_planes = in_table.data_ptr(), in_table.shape[0]
            plan.in_plane_stride = in_table.shape[1] * in_table.shape[2]
            plan.in_width = in_table.shape[2]
        n_index = ctypes.c_int64()
        n_work = _library.sr_gru4rec_step_scratch(ctypes.byref(plan), ctypes.byref(n_index))
        kept["index"] = torch.empty(n_index.value, dtype=torch.int64)
        kept["work"] = torch.empty(n_work)
        plan.index, plan.work = kept["index"].data_ptr(), kept["work"].data_ptr()
        _library.sr_gru4rec_step_init(ctypes.byref(plan))
        self._kept, self._plan = kept, plan  # the C function reads them at every step
        # Prepared once: a step's Python cost is this one call's argument conversion.
        self._function = _library.sr_gru4rec_step_f32
        self._plan_address = ctypes.addressof(plan)
        self._hidden = (ctypes.c_void_p * n_layers)()
        self._masks = (ctypes.c_void_p * n_layers)()
        self._loss = ctypes.c_double()
        self._loss_address = ctypes.addressof(self._loss)
        self._items = kept["items"].data_ptr()
        self._targets = kept["targets"].data_ptr()
        self._keep = kept["keep"].data_ptr()

    def __call__(self, start: int, stop: int, hidden: list[torch.Tensor],
                 samples: int | None, embed_mask: int | None, masks: list[int] | None
                 ) -> float:
        """The step of schedule entries ``start:stop``: updates ``hidden`` (contiguous,
        one per layer) and the parameters in place; returns the summed loss. ``samples``,
        ``embed_mask`` and ``masks`` (one per layer) are addresses of the step's negative
        samples and dropout masks (None: none)."""
        for i, h in enumerate(hidden):
            if not h.is_contiguous():  # pragma: no cover - the training loop's are
                raise ValueError("hidden states must be contiguous")
            self._hidden[i] = h.data_ptr()
        layer_masks = None
        if masks is not None:
            layer_masks = self._masks
            for i, address in enumerate(masks):
                layer_masks[i] = address
        status = self._function(self._plan_address, stop - start, self._items + 8 * start,
                                self._targets + 8 * start, samples, self._keep + 4 * start,
                                self._hidden, embed_mask, layer_masks, self._loss_address)
        if status < 0:
            raise IndexError("an item of the mini-batch lies outside the catalogue")
        return self._loss.value


def gru_tree_walk(sizes: torch.Tensor, layout: torch.Tensor, reset_after: torch.Tensor,
                  dense: torch.Tensor, gate_table: torch.Tensor, level_offsets: torch.Tensor,
                  parent: torch.Tensor, item: torch.Tensor, max_width: int
                  ) -> list[torch.Tensor]:
    """The states of a :func:`prefix_tree` (``level_offsets``, ``parent``, ``item``)
    through GRU4Rec's layers (``sizes``, ``layout``, ``reset_after`` as in
    :class:`Gru4recStep`; ``dense`` the flat weights, ``gate_table`` the first layer's
    gate inputs per item), level by level, at most ``max_width`` nodes per GRU step.
    Returns each layer's states (n_nodes x units)."""
    sizes = _input(sizes, torch.int64)
    n_nodes = len(parent)
    state = [torch.empty(n_nodes, int(size)) for size in sizes.tolist()]
    if n_nodes == 0:
        return state
    work = torch.empty(_library.sr_gru_tree_walk_scratch(len(sizes), sizes.data_ptr(),
                                                         max_width))
    pointers = (ctypes.c_void_p * len(state))(*[h.data_ptr() for h in state])
    layout, reset_after = _input(layout, torch.int64), _input(reset_after, torch.int64)
    dense, gate_table = _dense(dense), _dense(gate_table)
    n_items = gate_table.shape[0]
    status = _library.sr_gru_tree_walk_f32(
        len(sizes), sizes.data_ptr(), layout.data_ptr(), reset_after.data_ptr(),
        dense.data_ptr(), gate_table.data_ptr(), n_items, level_offsets.data_ptr(),
        len(level_offsets) - 1, parent.data_ptr(), item.data_ptr(), pointers, max_width,
        work.data_ptr(), threads())
    if status < 0:
        raise IndexError(f"an item lies outside [0, {n_items})")
    return state
