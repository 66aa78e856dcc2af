"""Every script in examples/ runs end to end (``--smoke``: the same code on less data and
one epoch), so that a broken example fails the suite; the demo's table has a row for every
estimator, on the real data and without it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from sessionrec import all_estimators

from .conftest import REPO, SHARED_DATA

EXAMPLES = sorted(p for p in (REPO / "examples").glob("*.py") if not p.name.startswith("_"))
NEEDS_MOVIELENS = {"hrnn_movielens.py", "movielens_pipeline.py", "prnn_movielens.py"}


def run_example(path, shared_data=SHARED_DATA, timeout=600) -> str:
    # MPLBACKEND: the plotting examples draw off screen, as on a machine without display.
    env = {**os.environ, "SESSIONREC_SHARED_DATA": str(shared_data), "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, str(path), "--smoke"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{path.name} failed:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-5000:]}"
    return done.stdout


def table_rows(output: str) -> dict[str, list[float]]:
    """The demo's table rows: model name -> its numbers (Recall@20, MRR@20, ...)."""
    rows = {}
    for line in output.splitlines():
        match = re.match(r"^(\w+Recommender)\s+([\d.]+)\s+([\d.]+)\s", line)
        if match:
            rows[match.group(1)] = [float(match.group(2)), float(match.group(3))]
    return rows


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES} == ({"quickstart.py", "gru4rec_rsc15.py", "ddp_gru4rec.py",
                                           "plot_training_curves.py", "plot_metrics_at_k.py",
                                           "plot_model_comparison.py"} | NEEDS_MOVIELENS)


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path):
    if path.name in NEEDS_MOVIELENS and not (SHARED_DATA / "ml-latest-small").is_dir():
        pytest.skip(f"needs ml-latest-small under {SHARED_DATA}")
    output = run_example(path)
    assert output.strip()
    if path.name == "quickstart.py":
        rows = table_rows(output)
        assert set(rows) == {cls.__name__ for cls in all_estimators()}
        assert all(0.0 <= value <= 1.0 for row in rows.values() for value in row)


@pytest.mark.slow
def test_demo_without_shared_data_says_so(tmp_path):
    """A new user without ../shared/data still gets a table, on synthetic data, and is
    told which."""
    output = run_example(REPO / "examples" / "quickstart.py", shared_data=tmp_path / "none")
    assert output.count("../shared/data not found: synthetic data") == 2
    assert "make_sessions(" in output
    assert set(table_rows(output)) == {cls.__name__ for cls in all_estimators()}
