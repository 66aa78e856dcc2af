"""GRU4Rec training and evaluation speed, memory and accuracy, as a table.

Runs (each in this process, one after the other):

* ``rsc15``: ../shared/data/rsc15-100k train_full -> test;
* ``synthetic``: ``make_sessions`` with ``--synthetic-events`` events over
  ``--synthetic-items`` items (default 1M events, 50k items), to show that the time per
  epoch does not grow with the catalogue the way a full softmax would.

Settings (``--config``): ``rsc15`` (default), the official rsc15 parameter file
(cross-entropy, logQ 1.0, constrained embedding, 100 units, batch 32, 2048 samples, alpha
0.5, dropout 0.0/0.4, lr 0.2, momentum 0.2); ``bpr-max`` (one-hot input, bpreg 1.0, ELU
0.5, uniform samples, lr 0.2, momentum 0.3); ``paper-top1`` (the ICLR 2016 setting: TOP1,
in-batch negatives only, tanh output, Adagrad without momentum, the paper's GRU).

Columns: train events/s and mini-batches/s (mean over epochs, sample-store refills
included), evaluation targets/s (full ranking of all training items, conservative ties):
the median of ``--eval-repeats`` evaluations (default 3; one rsc15 evaluation lasts about
80 ms on two cores, so a single timing moves with whatever else the machine does) and the
first of them, peak RSS of the process (or peak GPU memory), Recall@20 and MRR@20.

``--official-style`` trains, after each fit, the loop of ``_official_style.py`` (the
official port's way of training the same network: autograd, sparse-gradient embeddings,
scores over all columns, row-wise Adagrad after coalescing; rsc15 and bpr-max
configurations) on the CPU, from the same initial weights and with the same negative
samples as the fit before it, and prints its speed, its accuracy under the same
evaluation engine, and sessionrec's speed as a multiple of it, measured minutes apart on
the same machine.

Usage::

    python benchmarks/bench_gru4rec.py [--runs rsc15,synthetic] [--config rsc15]
        [--epochs 10] [--device auto|cpu|cuda] [--seeds 0,1,2] [--batch-size N]
        [--official-style] [--eval-repeats 3] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import ast
import copy
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _data import SHARED_DATA  # noqa: E402
from _machine import machine_line  # noqa: E402
from _official_style import train_official_style  # noqa: E402

from sessionrec import GRU4RecRecommender  # noqa: E402
from sessionrec.datasets import make_sessions, read_gru4rec_tsv  # noqa: E402
from sessionrec.evaluation import evaluate  # noqa: E402

# --config: the official rsc15 parameter file, the bpr-max configuration of the project's
# acceptance tests, and the ICLR 2016 paper's original setting.
CONFIGS = {
    "rsc15": dict(loss="cross-entropy", constrained_embedding=True, embedding=0,
                  layers=(100,), batch_size=32, dropout_p_embed=0.0, dropout_p_hidden=0.4,
                  learning_rate=0.2, momentum=0.2, n_sample=2048, sample_alpha=0.5,
                  logq=1.0, bpreg=0.0, elu_param=0.0),
    "bpr-max": dict(loss="bpr-max", constrained_embedding=False, embedding=0, layers=(100,),
                    batch_size=32, dropout_p_embed=0.0, dropout_p_hidden=0.0,
                    learning_rate=0.2, momentum=0.3, n_sample=2048, sample_alpha=0.0,
                    bpreg=1.0, elu_param=0.5),
    "paper-top1": dict(loss="top1", final_activation="tanh", reset_after=False,
                       constrained_embedding=False,
                       embedding=0, layers=(100,), batch_size=32, dropout_p_hidden=0.5,
                       learning_rate=0.05, momentum=0.0, n_sample=0),
}


def peak_memory_mb(device: torch.device) -> str:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if device.type == "cuda":
        gpu = torch.cuda.max_memory_allocated(device) / 2**20
        return f"{rss:,.0f} / {gpu:,.0f}"
    return f"{rss:,.0f}"


def load(run: str, args):
    if run == "rsc15":
        folder = SHARED_DATA / "rsc15-100k"
        if not folder.is_dir():
            raise SystemExit(f"rsc15-100k not found at {folder}")
        return (read_gru4rec_tsv(folder / "yoochoose-clicks-100k_train_full.txt"),
                read_gru4rec_tsv(folder / "yoochoose-clicks-100k_test.txt"))
    n_sessions = int(args.synthetic_events / 5.0)
    events = make_sessions(n_sessions=n_sessions, n_items=args.synthetic_items,
                           mean_length=5.0, max_length=50, random_state=0)
    last = events.groupby("SessionId")["Time"].transform("max")
    cut = last.quantile(0.98)
    return events[last <= cut], events[last > cut]


def official_style_row(train, test, config, epochs, seed, ours) -> None:
    """Train the official-style loop right after our fit; print its speed, the ratio,
    and its accuracy under sessionrec's evaluation engine."""
    supported = ((config["constrained_embedding"] and config["loss"] == "cross-entropy")
                 or (not config["constrained_embedding"] and config["embedding"] == 0
                     and config["loss"] == "bpr-max"))
    if not supported:
        raise SystemExit("--official-style implements the rsc15 and bpr-max "
                         "configurations only")
    hist, net, index = train_official_style(
        train, n_epochs=epochs, batch_size=config["batch_size"], hidden=config["layers"][0],
        input_mode="constrained" if config["constrained_embedding"] else "onehot",
        loss=config["loss"], n_sample=config["n_sample"],
        sample_alpha=config["sample_alpha"], logq=config.get("logq", 0.0),
        bpreg=config["bpreg"], elu_param=config["elu_param"],
        dropout_p=config["dropout_p_hidden"], lr=config["learning_rate"],
        momentum=config["momentum"], reset_after=config.get("reset_after", "auto"), seed=seed,
        # Our fit's start (weights and sample stream), replayed, when it ran on the CPU.
        start=(ours._initialised(ours._build_network()) if ours.device_.type == "cpu"
               else None))
    twin = copy.deepcopy(ours)
    if not twin.item_index_.labels.equals(index.labels):
        raise SystemExit("the official-style loop coded the items differently")
    net.copy_into(twin.network_)
    result = evaluate(twin, test, cutoffs=[20], metrics=["recall", "mrr"])
    events_s = np.mean([h["events_per_s"] for h in hist])
    ratio = np.mean([h["events_per_s"] for h in ours.history_]) / events_s
    print(f"{'  official-style':<15}{'':>8}{'':>10}{events_s:>10,.0f}"
          f"{np.mean([h['batches_per_s'] for h in hist]):>8,.0f}"
          f"{np.mean([h['seconds'] for h in hist]):>9.2f}{'':>21}{'(cpu)':>14}"
          f"{result['recall@20']:>11.4f}{result['mrr@20']:>8.4f}   sessionrec {ratio:.2f}x "
          f"as fast; mean loss {np.mean([h['loss'] for h in hist]):.4f} (ours "
          f"{np.mean([h['loss'] for h in ours.history_]):.4f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="rsc15,synthetic")
    parser.add_argument("--config", default="rsc15", choices=sorted(CONFIGS))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="override the configuration's batch size")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override an estimator parameter of the configuration, e.g. "
                             "--set reset_after=False (a Python literal; repeatable)")
    parser.add_argument("--synthetic-events", type=int, default=1_000_000)
    parser.add_argument("--synthetic-items", type=int, default=50_000)
    parser.add_argument("--eval-repeats", type=int, default=3,
                        help="evaluations timed after each fit (the table shows their "
                             "median and the first)")
    parser.add_argument("--official-style", action="store_true",
                        help="after each fit, train the official-style loop of "
                             "_official_style.py (rsc15 or bpr-max configuration, on the "
                             "CPU) from the same start, and print its speed, its accuracy "
                             "and the speed ratio")
    args = parser.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    config = dict(CONFIGS[args.config])
    if args.batch_size is not None:
        config["batch_size"] = args.batch_size
    for item in args.set:
        key, _, value = item.partition("=")
        config[key.strip()] = ast.literal_eval(value.strip())
    overrides = "".join(f", {item}" for item in args.set)
    print(f"device: {device} ({name}), torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, config {args.config}{overrides}, "
          f"batch {config['batch_size']}, epochs {args.epochs}")
    print(machine_line())
    header = (f"{'run':<10}{'seed':>5}{'items':>8}{'train ev':>10}{'events/s':>10}"
              f"{'mb/s':>8}{'epoch s':>9}{'eval tg/s':>11}{'1st eval':>10}{'peak MB':>14}"
              f"{'Recall@20':>11}{'MRR@20':>8}")
    print(header)
    print("-" * len(header))
    for run in args.runs.split(","):
        train, test = load(run, args)
        results = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            params = {**config, "n_epochs": args.epochs}
            est = GRU4RecRecommender(**params, device=str(device), random_state=seed)
            est.fit(train)
            eval_s = []
            for _ in range(max(1, args.eval_repeats)):
                start = time.perf_counter()
                result = evaluate(est, test, cutoffs=[20], metrics=["recall", "mrr"])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                eval_s.append(time.perf_counter() - start)
            hist = est.history_
            events_s = np.mean([h["events_per_s"] for h in hist])
            batches_s = np.mean([h["batches_per_s"] for h in hist])
            epoch_s = np.mean([h["seconds"] for h in hist])
            results.append((result["recall@20"], result["mrr@20"]))
            print(f"{run:<10}{seed:>5}{est.n_items_:>8,}{len(train):>10,}{events_s:>10,.0f}"
                  f"{batches_s:>8,.0f}{epoch_s:>9.2f}"
                  f"{result['n_targets'] / np.median(eval_s):>11,.0f}"
                  f"{result['n_targets'] / eval_s[0]:>10,.0f}"
                  f"{peak_memory_mb(device):>14}{result['recall@20']:>11.4f}"
                  f"{result['mrr@20']:>8.4f}", flush=True)
            if args.official_style:
                official_style_row(train, test, config, args.epochs, seed, est)
        if len(results) > 1:
            mean = np.mean(results, axis=0)
            print(f"{run:<10}{'mean':>5}{'':>83}{mean[0]:>11.4f}{mean[1]:>8.4f}")


if __name__ == "__main__":
    main()
