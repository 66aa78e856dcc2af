"""
GRU4Rec trained data-parallel on two processes (torch.distributed), against one process
=======================================================================================

Run ``python examples/ddp_gru4rec.py [--ranks 2] [--epochs 3] [--smoke]``: it fits GRU4Rec
on rsc15-100k (synthetic sessions when ../shared/data is absent) in this process, then
launches the same fit on ``--ranks`` processes with::

    python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        examples/ddp_gru4rec.py --rank-job

(``torchrun`` is the same command), and prints both results, the same global batch size
in each. Under ``--rank-job`` every rank initialises the process group (``gloo`` on CPUs,
``nccl`` on GPUs, one per rank), fits ``GRU4RecRecommender(distributed=True)`` on the same
events, and rank 0 evaluates and saves the model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import SMOKE_EPOCHS, add_smoke_flag, rsc15_or_synthetic  # noqa: E402

from sessionrec import GRU4RecRecommender  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402

# The official rsc15 settings, without dropout, on 64 units.
PARAMS = dict(loss="cross-entropy", layers=(64,), batch_size=64, n_sample=2048,
              sample_alpha=0.5, logq=1.0, learning_rate=0.2, momentum=0.2,
              constrained_embedding=True, random_state=0)


def fit_and_score(train, test, epochs: int, distributed: bool) -> dict:
    model = GRU4RecRecommender(**PARAMS, n_epochs=epochs, device="cpu" if not distributed
                               else "auto", distributed=distributed)
    start = time.perf_counter()
    model.fit(train)
    seconds = time.perf_counter() - start
    scores = evaluate(model, test, cutoffs=(20,))
    return dict(seconds=seconds, events_per_s=model.history_[-1]["events_per_s"],
                loss=model.history_[-1]["loss"], recall=scores["recall@20"],
                mrr=scores["mrr@20"]), model


def rank_job(args) -> None:
    """One rank of the data-parallel fit (run by torchrun)."""
    import joblib
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        _, train, test = rsc15_or_synthetic(smoke=args.smoke)
        result, model = fit_and_score(train, test, args.epochs, distributed=True)
        if dist.get_rank() == 0:
            result["ranks"] = dist.get_world_size()
            if args.out:
                Path(args.out).write_text(json.dumps(result))
                joblib.dump(model, Path(args.out).with_suffix(".joblib"))
            print(json.dumps(result))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = add_smoke_flag(argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rank-job", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.epochs = SMOKE_EPOCHS
    if args.rank_job:
        rank_job(args)
        return
    name, train, test = rsc15_or_synthetic(smoke=args.smoke)
    print(f"data: {name}: {len(train):,} training events; batch_size "
          f"{PARAMS['batch_size']} (global), {args.epochs} epoch(s)")
    one, _ = fit_and_score(train, test, args.epochs, distributed=False)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "ranks.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={args.ranks}", __file__, "--rank-job",
                   f"--epochs={args.epochs}", f"--out={out}"] + (["--smoke"] if args.smoke
                                                                   else [])
        print("launching:", " ".join(Path(c).name if c == sys.executable else c
                                     for c in command), flush=True)
        subprocess.run(command, check=True)
        many = json.loads(out.read_text())
    print(f"\n{'processes':<10} {'fit s':>7} {'events/s':>9} {'loss':>7} {'Recall@20':>10} "
          f"{'MRR@20':>8}")
    for label, r in (("1", one), (str(many["ranks"]), many)):
        print(f"{label:<10} {r['seconds']:>7.1f} {r['events_per_s']:>9,.0f} {r['loss']:>7.4f} "
              f"{r['recall']:>10.4f} {r['mrr']:>8.4f}")


if __name__ == "__main__":
    main()
