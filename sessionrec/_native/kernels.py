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

import torch

__all__ = ["available", "disabled", "fused_for", "enabled_for", "sparse_adagrad_", "dense_adagrad_",
           "unique_rows_marked", "output_cross_entropy", "gru_step", "gru_state_arrays",
           "gru_step_backward", "rank_counts", "product_ranks",
           "bpr_max", "Gru4recStepPlan", "gru4rec_step_scratch", "gru4rec_step_init",
           "gru4rec_step_function", "prefix_tree", "gru_tree_walk_scratch",
           "gru_tree_walk_function", "threads"]


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
    """Why :class:`Gru4recStepPlan` does not mirror the C ``Gru4recStep``, or None: the
    library reports the structure's size and each field's offset (``sr_struct_layout``)."""
    expected = [ctypes.sizeof(Gru4recStepPlan)] + [
        getattr(Gru4recStepPlan, name).offset for name, _ in Gru4recStepPlan._fields_]
    out = (ctypes.c_int64 * (len(expected) + 1))()
    n = library.sr_struct_layout(out, len(expected) + 1)
    reported = list(out[:n])
    if reported != expected:
        return (f"Gru4recStep has size and offsets {reported}, the Python mirror "
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
        "sr_unique_marked": ([p, i64, i64, p, p, p], i64),
        "sr_gru_forward_f32": ([i64, i64, i64, p, i64, p, p, p, i64, p, i64, p, p, p, i64,
                                p, p, p, p, p, i64], None),
        "sr_gru_backward_f32": ([i64, i64, i64, p, i64, p, p, p, p, i64, p, i64, p, i64, p,
                                 p, p, p, p, p, p, p, p, p, i64], None),
        "sr_output_xent_scratch": ([i64, i64, i64], i64),
        "sr_output_xent_f32": ([p, i64, i64, i64, p, p, i64, p, i64, p, p, p, p, p, i64],
                               ctypes.c_double),
        "sr_rank_counts_f32": ([p, i64, i64, i64, p, p, p, i64], i64),
        "sr_product_ranks_scratch": ([i64, i64, i64, i64, i64, i64, p], i64),
        "sr_product_ranks_f32": ([p, i64, i64, i64, p, p, i64, p, p, i64, p, p, p, p, p, i64],
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
        "sr_struct_layout": ([p, i64], i64),
    }  # the last argument of the kernels (not of sr_unique_marked): the number of threads
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
    marks = n_rows + (n_rows + 63) // 64  # positions and a bitmap of the rows
    scratch = torch.empty(marks + 2 * n, dtype=torch.int64)
    distinct, inverse = scratch[marks:marks + n], scratch[marks + n:]
    count = _library.sr_unique_marked(rows.data_ptr(), n, n_rows, scratch.data_ptr(),
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
    parts = torch.empty(2 * batch, dtype=torch.float64)
    loss = _library.sr_output_xent_f32(h.data_ptr(), batch, size, h.stride(0),
                                       table.data_ptr(), row_index.data_ptr(), n_items,
                                       column_of.data_ptr(), len(column_of), _pointer(shift),
                                       out_grad.data_ptr(), d_h.data_ptr(),
                                       scratch.data_ptr(), parts.data_ptr(), threads())
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


def gru_step(h: torch.Tensor, w_rz: torch.Tensor, w_h: torch.Tensor,
             b_h: torch.Tensor | None, *, gi: torch.Tensor | None = None,
             x: torch.Tensor | None = None, w_x: torch.Tensor | None = None,
             b: torch.Tensor | None = None, reset_after: bool = False,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One GRU step, products included (see :func:`~sessionrec.nn._layers.gru_forward`).

    The gate inputs are ``gi`` (B x 3H) or ``x W_x + b`` for the layer input ``x``
    (B x I). Returns ``(h_new, state)``: the new state, and one flat buffer that holds
    what :func:`gru_step_backward` needs (see :func:`gru_state_arrays`). One buffer
    rather than three tensors: on a small step, making each view of a buffer costs
    about as much as the kernel's element-wise work.
    """
    h = _rows(h)
    batch, size = h.shape
    if w_rz.shape != (size, 2 * size) or w_h.shape != (size, size):
        raise ValueError(f"GRU weights of shapes {tuple(w_rz.shape)} and "
                         f"{tuple(w_h.shape)} do not fit {size} units")
    n_in, ldgi = 0, 0
    if x is not None:
        x = _rows(x)
        n_in = x.shape[1]
        if w_x.shape != (n_in, 3 * size) or b.shape != (3 * size,):
            raise ValueError(f"input weights of shape {tuple(w_x.shape)} do not fit "
                             f"{n_in} inputs and {size} units")
    elif gi is None or gi.shape != (batch, 3 * size):
        raise ValueError(f"the gate inputs must be {batch} x {3 * size}")
    else:
        gi = _rows(gi)
        ldgi = gi.stride(0)
    block = batch * size
    # [rz (B x 2H) | rec (B x H) | c (B x H)], then the gate inputs when computed here
    state = torch.empty(block * (4 if x is None else 7))
    out = torch.empty(batch, size)
    at = state.data_ptr()
    _library.sr_gru_forward_f32(
        batch, n_in, size, _pointer(x), 0 if x is None else x.stride(0),
        _pointer(_dense(w_x)), _pointer(_dense(b)),
        gi.data_ptr() if x is None else at + 16 * block, ldgi, h.data_ptr(), h.stride(0),
        _dense(w_rz).data_ptr(), _dense(w_h).data_ptr(), _pointer(_dense(b_h)),
        int(reset_after), _pointer(_dense(mask)), at, at + 8 * block, at + 12 * block,
        out.data_ptr(), threads())
    return out, state


def gru_state_arrays(state: torch.Tensor, batch: int, size: int):
    """``(rz, rec, c)``, views of a :func:`gru_step` state: the gates (B x 2H), ``r * h``
    (or ``h W_h + b_h_c`` with ``reset_after``) and the candidate (B x H each)."""
    block = batch * size
    return (state[:2 * block].view(batch, 2 * size),
            state[2 * block:3 * block].view(batch, size),
            state[3 * block:4 * block].view(batch, size))


def gru_step_backward(dh: torch.Tensor, mask: torch.Tensor | None, state: torch.Tensor,
                      h: torch.Tensor, w_h: torch.Tensor, dw_rz: torch.Tensor,
                      dw_h: torch.Tensor, *, reset_after: bool = False,
                      db: torch.Tensor | None = None, db_h: torch.Tensor | None = None,
                      x: torch.Tensor | None = None, w_x: torch.Tensor | None = None,
                      dw_x: torch.Tensor | None = None, need_dx: bool = False,
                      need_dgi: bool = True):
    """Gradients of one GRU step (no step back in time), products included.

    ``dh`` is the gradient of the step's output (before its dropout ``mask``), ``state``
    and ``h`` those of the :func:`gru_step` that made it. Writes the weight gradients
    ``dw_rz``, ``dw_h`` and, where given, ``db``, ``db_h`` and ``dw_x = x^T dgi``; returns
    ``(dgi, dx)``: the gradient of the gate inputs (B x 3H) if ``need_dgi`` and, with
    ``need_dx``, that of the layer input, ``dgi W_x^T`` (else None each).
    """
    dh, h = _rows(dh), _rows(h)
    batch, size = h.shape
    block = batch * size
    if state.numel() < 4 * block:
        raise ValueError("state must come from gru_step on the same batch")
    n_in = 0 if w_x is None else w_x.shape[0]
    if x is not None:
        x = _rows(x)
    if (dw_x is not None and x is None) or (need_dx and w_x is None):
        raise ValueError("dw_x needs the layer input x, and dx its weights w_x")
    work = torch.empty(4 * block)  # [dgi (B x 3H) | d_rec (B x H)]
    dx = torch.empty(batch, n_in) if need_dx else None
    at, held = work.data_ptr(), state.data_ptr()
    _library.sr_gru_backward_f32(
        batch, n_in, size, dh.data_ptr(), dh.stride(0), _pointer(_dense(mask)), held,
        held + 12 * block, h.data_ptr(), h.stride(0), held + 8 * block, int(reset_after),
        _pointer(x), 0 if x is None else x.stride(0), _pointer(_dense(w_x)),
        _dense(w_h).data_ptr(), at, at + 12 * block,
        _pointer(dw_x if dw_x is None else _output(dw_x)),
        _pointer(db if db is None else _output(db)), _output(dw_rz).data_ptr(),
        _output(dw_h).data_ptr(), _pointer(db_h if db_h is None else _output(db_h)),
        _pointer(dx), threads())
    return (work[:3 * block].view(batch, 3 * size) if need_dgi else None), dx


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
    at = matrix.data_ptr()
    status = _library.sr_product_ranks_f32(
        h.data_ptr(), n_rows, size, h.stride(0), at, at + 4 * size * n_items, n_items,
        targets.data_ptr(), _pointer(rows), n_targets, counts.data_ptr(),
        counts[1].data_ptr() if strict else None, target_scores.data_ptr(),
        scratch.data_ptr(), index.data_ptr(), n_threads)
    if status < 0:
        raise IndexError(f"a target lies outside [0, {n_items}) or a row outside "
                         f"[0, {n_rows})")
    return counts[0], (counts[1] if strict else None), target_scores


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
    """The C ``Gru4recStep``: what :func:`gru4rec_step_function` needs besides a step's
    own inputs (addresses of the network's buffers and of scratch; see ``csrc/``)."""

    _fields_ = [(name, ctypes.c_int64) for name in (
        "n_items", "n_layers", "n_sample", "samples_int32", "max_batch", "n_threads")]
    _fields_ += [("sizes", ctypes.c_void_p), ("layout", ctypes.c_void_p),
                 ("reset_after", ctypes.c_void_p), ("table", ctypes.c_void_p),
                 ("n_planes", ctypes.c_int64), ("plane_stride", ctypes.c_int64),
                 ("dense", ctypes.c_void_p), ("grad", ctypes.c_void_p),
                 ("acc", ctypes.c_void_p), ("mom", ctypes.c_void_p),
                 ("n_dense", ctypes.c_int64), ("shift_batch", ctypes.c_void_p),
                 ("shift_sample", ctypes.c_void_p), ("lr", ctypes.c_double),
                 ("momentum", ctypes.c_double), ("index", ctypes.c_void_p),
                 ("work", ctypes.c_void_p), ("parts", ctypes.c_void_p),
                 ("keep_bias", ctypes.c_void_p), ("input_mode", ctypes.c_int64),
                 ("in_table", ctypes.c_void_p), ("in_planes", ctypes.c_int64),
                 ("in_plane_stride", ctypes.c_int64), ("in_width", ctypes.c_int64)]


def gru4rec_step_scratch(plan: Gru4recStepPlan) -> tuple[int, int]:
    """The scratch a plan needs: ``(int64 values, float32 values)``."""
    n_index = ctypes.c_int64()
    n_work = _library.sr_gru4rec_step_scratch(ctypes.byref(plan), ctypes.byref(n_index))
    return n_index.value, n_work


def gru4rec_step_init(plan: Gru4recStepPlan) -> None:
    """Prepare the plan's int64 scratch (once, after it is allocated)."""
    _library.sr_gru4rec_step_init(ctypes.byref(plan))


def gru4rec_step_function():
    """The C function of a whole GRU4Rec training step (``sr_gru4rec_step_f32``), for a
    caller that prepares its arguments once (see ``_fused_step.py``)."""
    return _library.sr_gru4rec_step_f32


def gru_tree_walk_scratch(sizes: torch.Tensor, max_width: int) -> int:
    """Floats of work :func:`gru_tree_walk_function`'s walk needs for layers of
    ``sizes`` (int64 tensor) and levels of at most ``max_width`` nodes."""
    return _library.sr_gru_tree_walk_scratch(len(sizes), sizes.data_ptr(), max_width)


def gru_tree_walk_function():
    """The C function of the states of a prefix tree through GRU4Rec's layers
    (``sr_gru_tree_walk_f32``), for a caller that prepares its arguments (see
    ``_fused_walk.py``)."""
    return _library.sr_gru_tree_walk_f32
