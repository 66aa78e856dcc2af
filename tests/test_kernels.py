"""The fused CPU kernels (sessionrec/_native/csrc/) against the PyTorch code they replace."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sessionrec import GRU4RecRecommender
from sessionrec._native import kernels as _kernels
from sessionrec.datasets import make_sessions
from sessionrec.nn._gru4rec_network import _output_layer
from sessionrec.nn._layers import (
    FusedGRUCache,
    GRUCache,
    gru_backward,
    gru_forward,
    gru_layer_backward,
    gru_layer_forward,
)
from sessionrec.nn._losses import StepConfig
from sessionrec.nn._optim import AdagradMomentum, FusedPackedTable, unique_rows

needs_library = pytest.mark.skipif(not _kernels.available(),
                                   reason="the fused kernels are not built or disabled")


def test_the_library_is_built_where_the_tests_run():
    """`pip install -e .` (the Makefile, CI) compiles the kernels; a failed build would
    otherwise pass unnoticed, with every CPU test on the slower PyTorch path."""
    if os.environ.get("SESSIONREC_FUSED", "1") == "0":
        pytest.skip("disabled by SESSIONREC_FUSED=0")
    assert _kernels.available()


def test_disabled_turns_the_kernels_off_and_back_on():
    before = _kernels.available()
    with _kernels.disabled():
        assert not _kernels.available()
        assert not _kernels.enabled_for(torch.zeros(2))
    assert _kernels.available() == before


@needs_library
def test_kernels_apply_to_float32_cpu_tensors_only():
    assert _kernels.enabled_for(torch.zeros(2))
    assert not _kernels.enabled_for(torch.zeros(2, dtype=torch.float64))


def _packed_step(fused: bool, momentum: float, keep: bool):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(40, 9), requires_grad=False)
    optimizer = AdagradMomentum(0.1, momentum)
    if fused:
        table = optimizer.table(param)
    else:
        with _kernels.disabled():
            table = optimizer.table(param)
    assert table.fused == fused
    assert isinstance(table, FusedPackedTable) == fused
    for _ in range(5):
        rows = torch.randint(0, 40, (25,))
        distinct, inverse = torch.unique(rows, return_inverse=True)
        grad = torch.zeros(len(distinct), 9).index_add_(0, inverse, torch.randn(25, 9))
        keep_last = (torch.rand(len(distinct)) < 0.3) if keep else None
        if keep_last is not None:
            grad[keep_last, -1] = 0.0  # as in a step: kept rows have no bias gradient
        table.step(table.rows(distinct), grad, keep_last)
    buffer = table.buffer.clone()
    table.release()
    return buffer


@needs_library
@pytest.mark.parametrize("momentum", [0.0, 0.3])
@pytest.mark.parametrize("keep", [False, True])
def test_sparse_adagrad_kernel_equals_the_pytorch_step(momentum, keep):
    torch.testing.assert_close(_packed_step(True, momentum, keep),
                               _packed_step(False, momentum, keep), rtol=1e-5, atol=1e-6)


@needs_library
@pytest.mark.parametrize("momentum", [0.0, 0.3])
def test_dense_adagrad_kernel_equals_the_pytorch_step(momentum):
    torch.manual_seed(0)
    start = torch.randn(1000)
    results = []
    for fused in (True, False):
        optimizer = AdagradMomentum(0.2, momentum)
        param = start.clone()
        with contextlib.nullcontext() if fused else _kernels.disabled():
            for _ in range(4):
                optimizer.dense_step(param, torch.sin(param * 3.0))
        assert next(iter(optimizer._dense_state.values()))[2] == fused
        results.append(param)
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-6)


@needs_library
@pytest.mark.parametrize("n_rows,n", [(1, 1), (7, 30), (3000, 2100)])
def test_unique_kernel_is_torch_unique(n_rows, n):
    rows = torch.randint(0, n_rows, (n,))
    distinct, inverse = _kernels.unique_rows_marked(rows, n_rows)
    expected, expected_inverse = torch.unique(rows, return_inverse=True)
    assert torch.equal(distinct, expected) and torch.equal(inverse, expected_inverse)
    # unique_rows takes the kernel when rows cover much of the table
    assert torch.equal(unique_rows(rows, n_rows)[0], expected)


@needs_library
def test_unique_kernel_rejects_rows_out_of_range():
    with pytest.raises(IndexError, match=r"outside \[0, 5\)"):
        _kernels.unique_rows_marked(torch.tensor([1, 5]), 5)
    with pytest.raises(IndexError):
        _kernels.unique_rows_marked(torch.tensor([-1]), 5)


def _output_layer_reference(h, table, row_index, column_of, shift):
    """The PyTorch path of the step's output layer: scores, cross_entropy_distinct, the two
    gradient products (only the columns' count matters, so column_of stands for them)."""
    param = torch.nn.Parameter(table.clone(), requires_grad=False)
    with _kernels.disabled():
        packed = AdagradMomentum(0.1, 0.0).table(param)
    return _output_layer(h, packed.rows(row_index), column_of, column_of, h.shape[0], shift,
                         StepConfig())


def _in_table(rows: torch.Tensor, extra: int = 5, seed: int = 0):
    """``rows`` scattered, in shuffled order, among ``extra`` other rows of a table, as
    a step's distinct items lie in the item table; returns the table and their rows."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(rows) + extra, generator=generator)[:len(rows)]
    table = torch.randn(len(rows) + extra, rows.shape[1], generator=generator)
    table[order] = rows
    return table, order


@needs_library
@pytest.mark.parametrize("shifted", [False, True])
@pytest.mark.parametrize("batch,size,n_distinct", [
    (32, 100, 1389),  # the rsc15 step: one chunk of 32 lanes, 22 blocks of items
    (5, 7, 13),       # padded lanes, one block, item and column counts off the tiles
    (70, 33, 200),    # three chunks of lanes, the last partial
    (1, 4, 2),
])
def test_output_layer_kernel_equals_the_pytorch_path(shifted, batch, size, n_distinct):
    """Same loss and gradients, including items that no column maps to (weight 0, as the
    input-only rows of a constrained step) and shapes that fill no tile exactly."""
    torch.manual_seed(0)
    n_cols = batch + 3 * n_distinct
    unused = 3 if n_distinct > 3 else 0
    column_of = torch.randint(0, n_distinct - unused, (n_cols,))  # the last items: none
    h = torch.randn(batch, size)
    rows = torch.randn(n_distinct, size + 1) * (4.0 / size ** 0.5)
    shift = torch.randn(n_cols) * 2 if shifted else None
    table, row_index = _in_table(rows)
    expected = _output_layer_reference(h, table, row_index, column_of, shift)
    got = _kernels.output_cross_entropy(h, table, row_index, column_of, shift)
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-4)
    for g, e in zip(got[1:], expected[1:]):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@needs_library
def test_output_layer_kernel_reads_strided_states():
    torch.manual_seed(0)
    h = torch.randn(9, 24)[:, 4:14]
    rows, column_of = torch.randn(40, 11), torch.randint(0, 40, (60,))
    table, row_index = _in_table(rows)
    expected = _output_layer_reference(h.contiguous(), table, row_index, column_of, None)
    got = _kernels.output_cross_entropy(h, table, row_index, column_of, None)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@needs_library
def test_output_layer_kernel_survives_extreme_scores():
    h = torch.tensor([[300.0], [-1e4]])
    rows = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 5.0]])
    column_of = torch.tensor([0, 1, 2])
    row_index = torch.arange(3)
    got = _kernels.output_cross_entropy(h, rows, row_index, column_of, None)
    expected = _output_layer_reference(h, rows, row_index, column_of, None)
    assert all(torch.isfinite(g).all() for g in got)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)


@needs_library
def test_output_layer_kernel_checks_the_row_width():
    with pytest.raises(ValueError, match="expected 5"):
        _kernels.output_cross_entropy(torch.zeros(2, 4), torch.zeros(3, 4),
                                      torch.tensor([0, 1]), torch.tensor([0, 1]), None)


def _gru_pair(reset_after: bool, with_bias: bool, with_mask: bool, strided: bool):
    torch.manual_seed(0)
    batch, size = 5, 11  # 11: rows with a partial group of eight lanes
    gi = torch.randn(batch, 3 * size)
    h_full = torch.randn(batch, size + 1)
    h = h_full[:, :size] if strided else h_full[:, :size].contiguous()
    w_rz, w_h = torch.randn(size, 2 * size) * 0.3, torch.randn(size, size) * 0.3
    b_h = torch.randn(3 * size) if with_bias else None
    mask = (torch.rand(batch, size) < 0.7).float() / 0.7 if with_mask else None
    dh = torch.randn(batch, size)
    out = {}
    for fused in (True, False):
        h_new, cache = gru_forward(gi, h, w_rz, w_h, reset_after=reset_after, b_h=b_h,
                                   mask=mask, fused=fused)
        dw_rz, dw_h = torch.empty(size, 2 * size), torch.empty(size, size)
        db_h = torch.empty(3 * size) if with_bias else None
        assert isinstance(cache, FusedGRUCache if fused else GRUCache)
        dgi = gru_backward(dh, cache, w_h, dw_rz, dw_h, db_h, mask=mask)
        out[fused] = (h_new, dgi, dw_rz, dw_h, db_h)
    return out


@needs_library
@pytest.mark.parametrize("reset_after,with_bias", [(False, False), (True, False),
                                                   (True, True)])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_fused_gru_step_equals_the_pytorch_step(reset_after, with_bias, with_mask, strided):
    out = _gru_pair(reset_after, with_bias, with_mask, strided)
    for got, expected in zip(out[True], out[False]):
        if expected is None:
            assert got is None
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def _layer_pair(reset_after: bool, with_mask: bool, batch: int, size: int, n_in: int):
    """A layer step fed by an input x, forward and backward, on both paths."""
    generator = torch.Generator().manual_seed(1)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator) * scale

    x_full = randn(batch, n_in + 3)
    x = x_full[:, :n_in]  # a row stride other than the width
    w_x, b = randn(n_in, 3 * size, scale=0.3), randn(3 * size)
    h = randn(batch, size)
    w_rz, w_h = randn(size, 2 * size, scale=0.3), randn(size, size, scale=0.3)
    b_h = randn(3 * size) if reset_after else None
    mask = ((torch.rand(batch, size, generator=generator) < 0.7).float() / 0.7
            if with_mask else None)
    dh = randn(batch, size)
    out = {}
    for fused in (True, False):
        h_new, cache = gru_layer_forward(x, w_x, b, h, w_rz, w_h, reset_after=reset_after,
                                         b_h=b_h, mask=mask, fused=fused)
        grads = [torch.full((n_in, 3 * size), 7.0), torch.full((3 * size,), 7.0),
                 torch.full((size, 2 * size), 7.0), torch.full((size, size), 7.0),
                 torch.full((3 * size,), 7.0) if reset_after else None]
        dgi, dx = gru_layer_backward(dh, cache, x, w_x, w_h, *grads, mask=mask,
                                     need_dx=True)
        out[fused] = [h_new, dgi, dx, *grads]
    return out


@needs_library
@pytest.mark.parametrize("reset_after", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
@pytest.mark.parametrize("batch,size,n_in", [(5, 11, 7), (33, 20, 19), (70, 40, 33)])
def test_fused_gru_layer_equals_the_pytorch_layer(reset_after, with_mask, batch, size, n_in):
    """The one-call layer step (gate input product, GRU, and every gradient product) gives
    what PyTorch's operations give, for widths that fill whole tiles of 16 and 8 columns
    and partial ones, and batches with and without a partial tile of 4 rows."""
    out = _layer_pair(reset_after, with_mask, batch, size, n_in)
    for k, (got, expected) in enumerate(zip(out[True], out[False])):
        if expected is None:
            assert got is None
        else:
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=2e-5, msg=str(k))


@needs_library
def test_fused_gru_saturates_like_tanh_and_sigmoid():
    gi = torch.tensor([[80.0, -80.0, 200.0, -200.0, 60.0, -60.0]])  # H = 2
    h = torch.tensor([[0.5, -0.5]])
    w_rz, w_h = torch.zeros(2, 4), torch.zeros(2, 2)
    got, _ = gru_forward(gi, h, w_rz, w_h, need_cache=False, fused=True)
    expected, _ = gru_forward(gi, h, w_rz, w_h, need_cache=False, fused=False)
    torch.testing.assert_close(got, expected)


@needs_library
@pytest.mark.parametrize("params", [
    dict(loss="cross-entropy", constrained_embedding=True, logq=1.0, dropout_p_hidden=0.3),
    dict(loss="bpr-max", constrained_embedding=False, embedding=0, momentum=0.2),
    dict(loss="top1", constrained_embedding=False, embedding=6, n_sample=0, layers=(8, 6),
         reset_after=True),
])
def test_fits_on_both_paths_agree(params):
    """A short fit with the fused kernels ends where the PyTorch path ends, up to the
    rounding the two ways of computing accumulate."""
    events = make_sessions(n_sessions=60, n_items=25, random_state=0)
    base = dict(layers=(8,), n_epochs=1, n_sample=12, batch_size=8, device="cpu",
                random_state=0, learning_rate=0.05)
    fused = GRU4RecRecommender(**{**base, **params}).fit(events)
    with _kernels.disabled():
        plain = GRU4RecRecommender(**{**base, **params}).fit(events)
    for (name, a), (_, b) in zip(fused.network_.state_dict().items(),
                                 plain.network_.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
    assert fused.history_[0]["loss"] == pytest.approx(plain.history_[0]["loss"], rel=1e-4)


@pytest.mark.parametrize("reset_after", [False, True])
def test_gru_step_under_autograd_keeps_its_graph(reset_after):
    """HRNN and p-RNN differentiate through gru_forward: where autograd records, the
    default takes PyTorch's operations, so gradients reach every input."""
    torch.manual_seed(0)
    leaves = [torch.randn(4, 15, requires_grad=True), torch.randn(4, 5, requires_grad=True),
              torch.randn(5, 10, requires_grad=True), torch.randn(5, 5, requires_grad=True)]
    h_new, _ = gru_forward(*leaves, need_cache=False, reset_after=reset_after)
    assert h_new.requires_grad
    grads = torch.autograd.grad(h_new.square().sum(), leaves)
    with _kernels.disabled():
        h_ref, _ = gru_forward(*leaves, need_cache=False, reset_after=reset_after)
        expected = torch.autograd.grad(h_ref.square().sum(), leaves)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    only_w_h = [t.detach() for t in leaves[:3]] + [leaves[3]]
    out, _ = gru_forward(*only_w_h, need_cache=False, reset_after=reset_after)
    assert out.requires_grad


@needs_library
def test_kernels_refuse_to_write_into_a_copy():
    """A kernel writing into a strided or float64 tensor would update a temporary copy:
    it raises instead."""
    h = torch.zeros(4, 5)
    dw_rz = torch.zeros(10, 5).t()  # 5 x 10, strided
    _, state = _kernels.gru_step(h, torch.zeros(5, 10), torch.zeros(5, 5), None,
                                 gi=torch.zeros(4, 15))
    with pytest.raises(ValueError, match="contiguous float32"):
        _kernels.gru_step_backward(h, None, state, h, torch.zeros(5, 5), dw_rz,
                                   torch.zeros(5, 5))
    with pytest.raises(ValueError, match="same batch"):
        _kernels.gru_step_backward(h[:3], None, state, h[:3], torch.zeros(5, 5),
                                   torch.zeros(5, 10), torch.zeros(5, 5))
    with pytest.raises(ValueError, match="contiguous float32"):
        _kernels.dense_adagrad_(torch.zeros(3, dtype=torch.float64), torch.zeros(3),
                                torch.ones(3), None, 0.1, 0.0)


def test_kernels_share_torch_thread_pool_where_built_with_openmp():
    """On Linux the library is built with OpenMP and binds to the libgomp.so.1 that the
    PyTorch wheels ship: one pool of threads, used in turn by torch and the kernels."""
    if not _kernels.available() or not _kernels._library.sr_openmp():
        pytest.skip("the kernels are not built with OpenMP here")
    torch_gomp = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    if not torch_gomp.exists():
        pytest.skip("this torch build has no libgomp.so.1 of its own")
    assert _kernels._parallel
    assert str(torch_gomp.resolve()) in {str(Path(p).resolve())
                                         for p in _kernels._openmp_runtimes()}


def _on_threads(parallel: bool, monkeypatch, run):
    """``run()`` with the kernels on all of torch's threads or on one."""
    with monkeypatch.context() as patch:
        patch.setattr(_kernels, "_parallel", parallel)
        patch.setattr(torch, "get_num_threads", lambda: 3 if parallel else 1)
        return run()


@needs_library
def test_kernel_results_do_not_depend_on_the_number_of_threads(monkeypatch):
    """Every element is written by one thread and sums are taken in a fixed order, so a
    fit is repeatable bit for bit whatever the thread setting (here 3 threads, uneven
    splits, against 1)."""
    if not _kernels._library.sr_openmp():
        pytest.skip("the kernels are not built with OpenMP here")
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    # large enough for every kernel to split its work
    width, n_rows, n = 101, 3001, 1777
    table = torch.rand(3, n_rows, width, generator=generator)
    rows = torch.randperm(n_rows, generator=generator)[:n].sort().values
    grad, keep = randn(n, width), torch.rand(n, generator=generator) < 0.3
    dense = [randn(70_001) for _ in range(3)]
    top, (out_table, out_index) = randn(67, 100), _in_table(randn(1389, 101) * 0.4, 17)
    column_of, shift = torch.randint(0, 1389, (2115,), generator=generator), randn(2115)
    batch, size, n_in = 97, 100, 37
    h, x = randn(batch, 2 * size)[:, :size], randn(batch, n_in)
    w_x, b, b_h = randn(n_in, 3 * size) * 0.2, randn(3 * size), randn(3 * size)
    w_rz, w_h = randn(size, 2 * size) * 0.1, randn(size, size) * 0.1
    mask, dh = (torch.rand(batch, size, generator=generator) > 0.4) / 0.6, randn(batch, size)

    def run():
        out = {"table": table.clone(), "param": dense[0].clone(), "acc": dense[2].abs(),
               "mom": dense[1].clone()}
        _kernels.sparse_adagrad_(out["table"], rows, grad, keep, 0.1, 0.3)
        _kernels.dense_adagrad_(out["param"], dense[1], out["acc"], out["mom"], 0.2, 0.3)
        out["loss"], out["out_grad"], out["d_h"] = _kernels.output_cross_entropy(
            top, out_table, out_index, column_of, shift)
        for reset_after in (False, True):
            bias = b_h if reset_after else None
            h_new, state = _kernels.gru_step(h, w_rz, w_h, bias, x=x, w_x=w_x, b=b,
                                             reset_after=reset_after, mask=mask)
            grads = [torch.empty(n_in, 3 * size), torch.empty(3 * size),
                     torch.empty(size, 2 * size), torch.empty(size, size),
                     torch.empty(3 * size) if reset_after else None]
            dgi, dx = _kernels.gru_step_backward(
                dh, mask, state, h, w_h, grads[2], grads[3], db=grads[1], db_h=grads[4],
                x=x, w_x=w_x, dw_x=grads[0], need_dx=True)
            for k, value in enumerate([h_new, state.buffer, dgi, dx, *grads]):
                if value is not None:
                    out[f"gru {reset_after} {k}"] = value
        return out

    start = generator.get_state()
    many = _on_threads(True, monkeypatch, run)
    generator.set_state(start)
    one = _on_threads(False, monkeypatch, run)
    for name in many:
        assert torch.equal(many[name], one[name]), name


@needs_library
@pytest.mark.parametrize("ties", ["conservative", "optimistic", "median"])
@pytest.mark.parametrize("n_rows", [5, 70, 130])
def test_product_ranks_count_the_scores_of_the_product(ties, n_rows):
    """Ranks counted from [h | 1] W^T without a score matrix equal the engine's ranks of
    that matrix. Quarter-integer values keep every product and sum exact in float32, so
    the two orders of summation give the same scores, ties included; a row of NaN ranks
    its target last."""
    from sessionrec.evaluation import ranks_from_counts, ranks_from_scores

    generator = torch.Generator().manual_seed(n_rows)
    h = torch.randint(-2, 3, (n_rows, 13), generator=generator).float() / 4
    h[1] = float("nan")
    matrix = torch.randint(-2, 3, (14, 45), generator=generator).float() / 4
    targets = torch.randint(0, 45, (n_rows,), generator=generator)
    expected = ranks_from_scores(torch.mm(torch.nn.functional.pad(h, (0, 1), value=1.0),
                                          matrix), targets, ties)
    for threads in (True, False):  # the rows split between 3 threads, and on one
        at_least, above, scores = _on_threads(
            threads, pytest.MonkeyPatch(),
            lambda: _kernels.product_ranks(h, matrix, targets, ties != "conservative"))
        got = ranks_from_counts(at_least, above, scores, 45, ties)
        assert torch.equal(got, expected)
    assert got[1] == 45
    # Rows repeated bit for bit (NaN rows too) are scored once and counted for each of
    # their targets; a view with a row stride is read through it.
    repeats = torch.randint(0, n_rows, (3 * n_rows,), generator=generator)
    wide = torch.zeros(3 * n_rows, 20)
    wide[:, :13] = h[repeats]
    other = torch.randint(0, 45, (3 * n_rows,), generator=generator)
    expected = ranks_from_scores(torch.mm(torch.nn.functional.pad(h[repeats], (0, 1),
                                                                  value=1.0), matrix),
                                 other, ties)
    for threads in (True, False):
        counts = _on_threads(threads, pytest.MonkeyPatch(), lambda: _kernels.product_ranks(
            wide[:, :13], matrix, other, ties != "conservative"))
        assert torch.equal(ranks_from_counts(*counts, 45, ties), expected)
        # targets mapped to rows by the caller: the same counts, no row compared
        counts = _on_threads(threads, pytest.MonkeyPatch(), lambda: _kernels.product_ranks(
            h, matrix, other, ties != "conservative", rows=repeats))
        assert torch.equal(ranks_from_counts(*counts, 45, ties), expected)
    with pytest.raises(IndexError, match="outside"):
        _kernels.product_ranks(h, matrix, other, False, rows=repeats + n_rows)
    with pytest.raises(ValueError, match="rows for"):
        _kernels.product_ranks(h, matrix, other, False, rows=repeats[1:])
    with pytest.raises(IndexError, match=r"outside \[0, 45\)"):
        _kernels.product_ranks(h, matrix, torch.full((n_rows,), 45), False)


@needs_library
@pytest.mark.parametrize("elu", [False, True])
@pytest.mark.parametrize("shape", [(4, 6, 9), (5, 5, 5), (32, 700, 1100)])
def test_bpr_max_kernel_is_the_closed_form_summed_onto_items(elu, shape, monkeypatch):
    """The fused bpr-max equals the closed form on the columns' scores (shifted or not),
    with the columns' gradients summed onto their items, up to rounding; its results do
    not depend on the number of threads."""
    from sessionrec.nn._losses import bpr_max_closed_form

    batch, n_items, n_cols = shape
    generator = torch.Generator().manual_seed(n_cols)
    scores = torch.randn(batch, n_items, generator=generator) * 2
    column_of = torch.randint(0, n_items, (n_cols,), generator=generator)
    for shift in (None, torch.randn(n_cols, generator=generator)):
        columns = scores.index_select(1, column_of)
        if shift is not None:
            columns = columns + shift
        loss, d_columns = bpr_max_closed_form(columns, 0.7, "elu" if elu else "linear", 0.5)
        expected = torch.zeros(batch, n_items).index_add_(1, column_of, d_columns)
        results = [_on_threads(parallel, monkeypatch, lambda s=shift: _kernels.bpr_max(
            scores, column_of, s, 0.7, elu, 0.5)) for parallel in (True, False)]
        got_loss, got = results[0]
        torch.testing.assert_close(got_loss, loss, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert torch.equal(got, results[1][1]) and torch.equal(got_loss, results[1][0])
    with pytest.raises(ValueError, match="at least 4 columns"):
        _kernels.bpr_max(torch.zeros(4, 5), torch.tensor([0, 1, 2]), None, 1.0, False, 0.5)


@needs_library
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=6), min_size=1,
                max_size=12), st.data())
def test_prefix_tree_numbers_each_distinct_prefix_once(sessions, data):
    """Every event but a session's last ends a prefix (an empty session, whose items
    were unknown, has none); equal prefixes share a node,
    whose parent is the prefix without its last item; nodes are numbered level by level
    (prefix length), in order of first appearance within a level."""
    first = data.draw(st.integers(0, len(sessions) - 1))
    stop = data.draw(st.integers(first + 1, len(sessions)))
    items = torch.tensor([i for s in sessions for i in s], dtype=torch.int64)
    offsets = torch.tensor(np.cumsum([0] + [len(s) for s in sessions]), dtype=torch.int64)
    node_of, parent, item, level_offsets = _kernels.prefix_tree(items, offsets, first, stop)
    prefixes = [tuple(s[:k + 1]) for s in sessions[first:stop] for k in range(len(s) - 1)]
    assert len(node_of) == len(prefixes)
    expected = sorted(dict.fromkeys(prefixes), key=len)  # stable: first appearance
    assert len(parent) == len(item) == len(expected)

    def spelled(node):
        return () if node < 0 else spelled(int(parent[node])) + (int(item[node]),)

    assert [spelled(node) for node in range(len(parent))] == expected
    assert [expected[int(node)] for node in node_of] == prefixes
    lengths = [len(p) for p in expected]
    assert level_offsets.tolist() == [0] + [sum(n <= k for n in lengths)
                                            for k in range(1, max(lengths, default=0) + 1)]


def test_the_c_structures_match_their_python_mirrors():
    """The library reports each structure's size and field offsets; the ctypes mirrors
    have the same, and a library whose layout differs is refused with a warning (the
    PyTorch code then runs)."""
    if not _kernels.available():
        pytest.skip("needs the fused kernels")
    assert _kernels._layout_mismatch(_kernels._library) is None
    names = [mirror._c_name for mirror in _kernels._MIRRORS]
    assert names == ["Gru4recStep", "GruStepArgs", "GruBackwardArgs"]
    assert _kernels._library.sr_struct_layout(len(names), None, 0) == -1  # no such one

    class Shifted:
        def __init__(self, wrong: int):
            self.wrong = wrong

        def sr_struct_layout(self, which, out, capacity):
            n = _kernels._library.sr_struct_layout(which, out, capacity)
            if which == self.wrong:
                out[n - 1] += 8  # the last field moved
            return n

    for which, name in enumerate(names):
        assert name in _kernels._layout_mismatch(Shifted(which))


# -- top-k selection (predictions and live sessions) --------------------------------------

def _chain_scores(h: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Every item's score by the kernels' chain (product_ranks' target scores)."""
    n_items = matrix.shape[1]
    rows = torch.arange(len(h)).repeat_interleave(n_items)
    targets = torch.arange(n_items).repeat(len(h))
    return _kernels.product_ranks(h, matrix, targets, False, rows=rows)[2].view(len(h), -1)


@needs_library
@pytest.mark.parametrize("n_items,size", [(5, 3), (77, 5), (1000, 16), (4097, 100)])
def test_product_topk_is_the_chains_best_in_a_fixed_order(n_items, size):
    """The k best of the chain's scores (the scores counted by product_ranks), score
    descending then item ascending, whatever the number of rows or threads."""
    gen = torch.Generator().manual_seed(n_items)
    matrix = torch.randn(size + 1, n_items, generator=gen)
    matrix[:, n_items // 2:] = matrix[:, :1]  # many exact ties
    h = torch.randn(9, size, generator=gen)
    packed = _kernels.PackedScores(matrix)
    k = min(n_items, 20)
    items, scores = _kernels.product_topk(h, packed, k)
    chain = _chain_scores(h, matrix)
    for r in range(len(h)):
        order = sorted(range(n_items), key=lambda i: (-chain[r, i].item(), i))[:k]
        assert items[r].tolist() == order
        assert torch.equal(scores[r], chain[r, order])
    from sessionrec._threads import torch_threads_limited

    with torch_threads_limited(1):  # one thread, fewer rows: the same lists and scores
        for rows in (slice(0, 1), slice(2, 5)):
            one = _kernels.product_topk(h[rows], packed, k)
            assert torch.equal(one[0], items[rows]) and torch.equal(one[1], scores[rows])


@needs_library
def test_product_topk_exclusions_score_minus_infinity():
    gen = torch.Generator().manual_seed(0)
    matrix = torch.randn(4, 10, generator=gen)
    packed = _kernels.PackedScores(matrix)
    h = torch.randn(2, 3, generator=gen)
    exclude = (torch.tensor([0, 9, 9]), torch.arange(9))  # row 0: all but item 9
    items, scores = _kernels.product_topk(h, packed, 10, exclude)
    assert items[0, 0] == 9 and torch.isinf(scores[0, 1:]).all()
    assert items[0, 1:].tolist() == list(range(9))  # -inf ties: by item
    assert torch.equal(items[1], _kernels.product_topk(h[1:], packed, 10)[0][0])
    with pytest.raises(ValueError, match="k=11"):
        _kernels.product_topk(h, packed, 11)


needs_int8 = pytest.mark.skipif(not (_kernels.available() and _kernels.int8_topk_available()),
                                reason="needs the kernels and a processor with AVX512-VNNI")


@needs_int8
@settings(max_examples=40, deadline=None)
@given(n_items=st.sampled_from([1, 5, 63, 64, 65, 700, 5000]),
       size=st.sampled_from([1, 3, 7, 100, 130]), n_rows=st.sampled_from([1, 2, 5, 9, 40]),
       k=st.sampled_from([1, 3, 20, 100]), scale=st.sampled_from([1e-3, 0.1, 1.0, 30.0]),
       ties=st.booleans(), excluded=st.integers(0, 30), seed=st.integers(0, 2**16))
def test_int8_topk_equals_product_topk_bit_for_bit(n_items, size, n_rows, k, scale, ties,
                                                   excluded, seed):
    """The int8 pass only bounds the scores: the lists and scores are product_topk's."""
    from sessionrec._topk import exclusions_from_lists

    rng = np.random.default_rng(seed)
    matrix = torch.from_numpy(rng.normal(0, scale, (size + 1, n_items)).astype(np.float32))
    if ties:
        matrix[:, n_items // 2:] = matrix[:, :1]
    h = torch.from_numpy(rng.uniform(-1, 1, (n_rows, size)).astype(np.float32))
    k = min(k, n_items)
    exclude = None
    if excluded:
        exclude = exclusions_from_lists(
            [rng.choice(n_items, size=min(n_items - 1, excluded), replace=False)
             for _ in range(n_rows)])
    packed = _kernels.PackedScores(matrix)
    table = _kernels.Int8Scores(matrix, packed)
    want = _kernels.product_topk(h, packed, k, exclude)
    got = _kernels.int8_topk(h, table, k, exclude)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@needs_int8
def test_int8_topk_hands_undecidable_rows_to_product_topk():
    gen = torch.Generator().manual_seed(1)
    matrix = torch.randn(11, 300, generator=gen)
    packed = _kernels.PackedScores(matrix)
    table = _kernels.Int8Scores(matrix, packed)
    h = torch.randn(3, 10, generator=gen)
    h[0, 2] = float("nan")
    h[1] *= 1e36  # scores near float's range: no bound
    for args in ((5,), (300,)):
        want = _kernels.product_topk(h, packed, *args)
        got = _kernels.int8_topk(h, table, *args)
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1].nan_to_num(), want[1].nan_to_num())
    matrix[3, 7] = float("inf")  # a table without bounds: the float kernel throughout
    table = _kernels.Int8Scores(matrix)
    assert not table.usable
    assert torch.equal(_kernels.int8_topk(h[2:], table, 5)[0],
                       _kernels.product_topk(h[2:], table.exact, 5)[0])
