"""No process-wide side effects: thread counts are scoped, logging is left alone, and
``import sessionrec`` loads no C library."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import torch

from sessionrec import ItemKNNRecommender, SKNNRecommender
from sessionrec._threads import torch_threads_limited


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_scoring_restores_the_thread_count(train_test, two_threads):
    train, test = train_test
    model = SKNNRecommender().fit(train)
    model.predict_next(test, k=5)
    model.rank_next_items(test)
    assert torch.get_num_threads() == 2


def test_a_scope_limits_only_the_calling_thread(two_threads):
    """Scopes that open and close in another order than a stack, in two threads: each
    limits its own thread only, and each thread gets its own count back."""
    inner_entered, outer_left = threading.Event(), threading.Event()
    seen = {}

    def other():
        seen["other, before"] = torch.get_num_threads()
        with torch_threads_limited(1):
            seen["other, inside"] = torch.get_num_threads()
            inner_entered.set()
            outer_left.wait(5)
            seen["other, after main left"] = torch.get_num_threads()
        seen["other, after"] = torch.get_num_threads()

    scope = torch_threads_limited(1)
    scope.__enter__()
    assert torch.get_num_threads() == 1
    thread = threading.Thread(target=other)
    thread.start()
    inner_entered.wait(5)
    scope.__exit__(None, None, None)  # the first scope ends while the other is open
    assert torch.get_num_threads() == 2
    outer_left.set()
    thread.join(5)
    assert seen == {"other, before": 2, "other, inside": 1, "other, after main left": 1,
                    "other, after": 2}
    assert torch.get_num_threads() == 2


def test_scoring_leaves_other_threads_alone(train_test, two_threads):
    """While a kNN model scores in one thread, another thread's torch count stays."""
    train, test = train_test
    model = SKNNRecommender().fit(train)
    started, counts = threading.Event(), []

    def watch():
        started.set()
        for _ in range(200):
            counts.append(torch.get_num_threads())

    blocks = model._map_blocks(lambda block: block, [np.arange(3)] * 4)
    next(blocks)  # inside the scoring scope now
    thread = threading.Thread(target=watch)
    thread.start()
    thread.join(10)
    assert torch.get_num_threads() == 1  # the scoring thread, inside its scope
    list(blocks)
    assert set(counts) == {2} and torch.get_num_threads() == 2


def test_concurrent_predictions_match_serial_ones(train_test, two_threads):
    """Models that score in worker threads, called from several threads at once."""
    train, test = train_test
    models = [SKNNRecommender().fit(train), ItemKNNRecommender().fit(train)]
    expected = [m.rank_next_items(test) for m in models]
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                results[i] = models[i % 2].rank_next_items(test)
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i, ranks in results.items():
        pd.testing.assert_series_equal(ranks, expected[i % 2])
    assert torch.get_num_threads() == 2


def test_fits_leave_logging_alone(train_test):
    from sessionrec import GRU4RecRecommender, PopularityRecommender

    train, _ = train_test
    loggers = [logging.getLogger(), logging.getLogger("sessionrec")]
    before = [(lg.level, list(lg.handlers)) for lg in loggers]
    GRU4RecRecommender(layers=(8,), n_epochs=1, n_sample=8, device="cpu", random_state=0,
                       verbose=True).fit(train)
    PopularityRecommender(verbose=True).fit(train)
    assert [(lg.level, list(lg.handlers)) for lg in loggers] == before


def _mapped_after(code: str) -> list[str]:
    script = (f"{code}\n"
              "with open('/proc/self/maps') as f:\n"
              "    print('\\n'.join(sorted({l.split()[-1] for l in f if '_fused' in l})))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_import_loads_no_c_library():
    assert _mapped_after("import sessionrec") == []
    assert _mapped_after("import sessionrec.evaluation, sessionrec.metrics") == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_the_c_library_loads_on_first_use():
    from sessionrec._native import kernels

    if not kernels.built():
        pytest.skip("the C kernels are not built")
    mapped = _mapped_after("import torch\nfrom sessionrec.evaluation import ranks_from_scores\n"
                           "ranks_from_scores(torch.rand(3, 5), [0, 1, 2])")
    assert len(mapped) == 1


def _imports(module: str) -> set[str]:
    """The sessionrec modules that ``module``'s source imports (anywhere in it)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin).read())
    package = module if spec.submodule_search_locations else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("sessionrec"):
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if importlib.util.find_spec(base).submodule_search_locations
                              and importlib.util.find_spec(candidate) else base)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("sessionrec")}
    return found


def test_the_evaluation_floor_does_not_import_the_networks():
    """The evaluation engine and the metrics, and everything they import, import nothing
    from sessionrec.nn nor the models: they rank the scores of any model."""
    seen, todo = set(), ["sessionrec.evaluation", "sessionrec.metrics"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(_imports(module) - seen)
    assert "sessionrec._native.kernels" in seen
    assert not [m for m in seen if m.startswith(("sessionrec.nn", "sessionrec.models"))]
