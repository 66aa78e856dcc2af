"""Two versions of sessionrec side by side: training and evaluation speed, same run.

Checks out ``--base`` (a git revision) into a temporary worktree, builds its C kernels
there, and then measures it and the working tree in turns (A B B A A B ...), each
measurement a fresh process, so that the machine's drift hits both alike. Prints one
table: the median of each figure per version and the median of the per-round ratios
(working tree / base), with the accuracy each got (which should be equal where the
arithmetic did not change).

Measured, on rsc15-100k (../shared/data; ``make_sessions`` data without it):

* GRU4Rec, the official rsc15 configuration, ``--epochs`` epochs: training events/s
  (the median over epochs of ``history_``'s ``events_per_s``) and evaluation targets/s
  (full ranking, the median of 3 evaluations), Recall@20 / MRR@20;
* SKNN: evaluation targets/s (it scores in worker threads; the median of 3).

Usage::

    python benchmarks/bench_versions.py --base main~3 [--rounds 5] [--epochs 2]
        [--fused 1|0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Runs in a fresh process with the version under test first on sys.path; prints JSON.
_MEASURE = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import sessionrec
from sessionrec import GRU4RecRecommender, SKNNRecommender
from sessionrec.datasets import make_sessions, read_gru4rec_tsv
from sessionrec.evaluation import evaluate

data = Path(sys.argv[1])
epochs = int(sys.argv[2])
if (data / "rsc15-100k").is_dir():
    train = read_gru4rec_tsv(data / "rsc15-100k/yoochoose-clicks-100k_train_full.txt")
    test = read_gru4rec_tsv(data / "rsc15-100k/yoochoose-clicks-100k_test.txt")
else:
    events = make_sessions(n_sessions=20000, n_items=3000, random_state=0)
    cut = events["SessionId"] < 18000
    train, test = events[cut], events[~cut]
model = GRU4RecRecommender(loss="cross-entropy", constrained_embedding=True,
                           layers=(100,), batch_size=32, dropout_p_hidden=0.4,
                           learning_rate=0.2, momentum=0.2, n_sample=2048,
                           sample_alpha=0.5, logq=1.0, n_epochs=epochs, device="cpu",
                           random_state=0).fit(train)
out = {"module": sessionrec.__file__,
       "train_events_per_s": float(np.median([r["events_per_s"] for r in model.history_]))}
targets = int((test.groupby("SessionId").size() - 1).clip(lower=0).sum())


def timed(estimator):  # (result, targets per second): the median of 3 evaluations
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = evaluate(estimator, test, cutoffs=[20])
        times.append(time.perf_counter() - start)
    return result, targets / float(np.median(times))


result, out["eval_targets_per_s"] = timed(model)
out["recall@20"], out["mrr@20"] = result["recall@20"], result["mrr@20"]
sknn_result, out["sknn_targets_per_s"] = timed(SKNNRecommender().fit(train))
out["sknn_mrr@20"] = sknn_result["mrr@20"]
print(json.dumps(out))
"""

FIGURES = [("train_events_per_s", "GRU4Rec training events/s"),
           ("eval_targets_per_s", "GRU4Rec evaluation targets/s"),
           ("sknn_targets_per_s", "SKNN evaluation targets/s")]
ACCURACY = ["recall@20", "mrr@20", "sknn_mrr@20"]


def build(checkout: Path) -> None:
    """Compile the checkout's C kernels in place (optional: without a compiler the
    version runs its PyTorch code, and the table says which path each row ran)."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                   cwd=checkout, check=False, capture_output=True)


def measure(checkout: Path, data: Path, epochs: int, fused: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "SESSIONREC_FUSED": fused}
    result = subprocess.run([sys.executable, "-P", "-c", _MEASURE, str(data), str(epochs)],
                            cwd=tempfile.gettempdir(), env=env, check=True,
                            capture_output=True, text=True)
    values = json.loads(result.stdout.strip().splitlines()[-1])
    if not values["module"].startswith(str(checkout)):
        raise RuntimeError(f"measured {values['module']}, not the checkout {checkout}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--fused", choices=["1", "0"], default="1",
                        help="SESSIONREC_FUSED for both versions")
    args = parser.parse_args()
    data = REPO.parent / "shared" / "data"
    base_dir = Path(tempfile.mkdtemp(prefix="sessionrec-base-"))
    try:
        subprocess.run(["git", "worktree", "add", "--detach", str(base_dir), args.base],
                       cwd=REPO, check=True, capture_output=True)
        build(base_dir)
        build(REPO)
        versions = {"base": base_dir, "working tree": REPO}
        rows: dict[str, list[dict]] = {name: [] for name in versions}
        for r in range(args.rounds):
            # A B, then B A: neither version always runs first in a round.
            order = list(versions.items())
            for name, checkout in (order if r % 2 == 0 else order[::-1]):
                rows[name].append(measure(checkout, data, args.epochs, args.fused))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_dir)], cwd=REPO,
                       check=False, capture_output=True)
        shutil.rmtree(base_dir, ignore_errors=True)
    print(f"base {args.base} against the working tree, {args.rounds} rounds in turns, "
          f"SESSIONREC_FUSED={args.fused}, {args.epochs} epochs")
    print(f"{'figure':34} {'base':>12} {'working tree':>14} {'ratio (median)':>15}")
    for key, label in FIGURES:
        base = [r[key] for r in rows["base"]]
        new = [r[key] for r in rows["working tree"]]
        ratio = statistics.median(n / b for n, b in zip(new, base, strict=True))
        print(f"{label:34} {statistics.median(base):12,.0f} {statistics.median(new):14,.0f} "
              f"{ratio:15.3f}")
    for key in ACCURACY:
        base = {round(r[key], 6) for r in rows["base"]}
        new = {round(r[key], 6) for r in rows["working tree"]}
        print(f"{key:34} {', '.join(map(str, sorted(base))):>12} "
              f"{', '.join(map(str, sorted(new))):>14}")


if __name__ == "__main__":
    main()
