"""How fit and evaluation grow with the number of events and the size of the catalogue.

Each measurement runs in a child process of its own, so that its peak memory is its own:

1. generate the events (``make_sessions``: Zipf popularity, planted transitions) and hold
   out the sessions that start last (``--test-events`` of them) for evaluation;
2. reset the process's peak resident memory (``/proc/self/clear_refs``) so that the peak
   read after the fit is the fit's, not the generator's;
3. fit one epoch, read the peak RSS and the fit's time; evaluate (all training items
   ranked, conservative ties: the evaluation engine) and time it.

Columns: events (training), items, seconds of the epoch, training events/s (from
``history_`` for the recurrent models: the epoch alone; the whole ``fit`` for V-SKNN),
peak RSS of the fit, bytes per training event at the peak (the fit's peak above the RSS
before it, over the training events: what the model and its training add to the data the
caller already holds) and kept after the fit (the fitted model), the caller's frame in
bytes per event, evaluation targets/s, Recall@20 and MRR@20. The last lines give, per
model, how events/s and targets/s grew from the smallest shape to the largest, and the
memory each added event costs (the fixed part, item tables and buffers, drops out).

Usage::

    python benchmarks/bench_scale.py [--events 1M,3M,10M,30M] [--items 40k]
        [--models gru4rec-xent,gru4rec-bprmax,vsknn] [--test-events 20000]
    python benchmarks/bench_scale.py --events 5M --items 3k,40k,200k,1M

Sizes take ``k`` and ``M`` suffixes. ``--smoke`` runs the smallest shapes (seconds).
Sessions average 5 events, so 30M events are 6M sessions.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = {
    # The official rsc15 parameter file on 100 units and one epoch: cross-entropy with
    # logQ, 2048 samples at alpha 0.5, batch 32, dropout 0.4 on the shared embedding.
    "gru4rec-xent": dict(cls="GRU4RecRecommender", params=dict(
        loss="cross-entropy", layers=(100,), batch_size=32, n_sample=2048,
        sample_alpha=0.5, logq=1.0, dropout_p_hidden=0.0, dropout_p_embed=0.4,
        learning_rate=0.2, momentum=0.2, constrained_embedding=True, n_epochs=1,
        random_state=0)),
    # bpr-max with its ELU, one-hot input (a table of items x 3H), uniform samples,
    # batch 32.
    "gru4rec-bprmax": dict(cls="GRU4RecRecommender", params=dict(
        loss="bpr-max", layers=(100,), batch_size=32, n_sample=2048, sample_alpha=0.0,
        bpreg=1.0, elu_param=0.5, learning_rate=0.2, momentum=0.3,
        constrained_embedding=False, n_epochs=1, random_state=0)),
    "vsknn": dict(cls="VSKNNRecommender", params={}),
}


def parse_size(text: str) -> int:
    text = text.strip()
    scale = {"k": 1_000, "K": 1_000, "M": 1_000_000}.get(text[-1], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Make the peak RSS (VmHWM) start again from the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def measure(model: str, n_events: int, n_items: int, test_events: int, device: str) -> dict:
    """One measurement (in the child process)."""
    import numpy as np
    import torch

    import sessionrec
    from sessionrec.datasets import make_sessions
    from sessionrec.evaluation import evaluate

    mean_length = 5.0
    n_sessions = int(round((n_events + test_events) / mean_length))
    start = time.perf_counter()
    events = make_sessions(n_sessions=n_sessions, n_items=n_items, mean_length=mean_length,
                           max_length=50, random_state=0)
    generate_s = time.perf_counter() - start
    # The sessions that start last are the test set (make_sessions numbers sessions in
    # order of their start).
    session = events["SessionId"].to_numpy()
    cut = session[max(0, len(session) - test_events)]
    train, test = events[session < cut], events[session >= cut]
    frame_bytes = train.memory_usage(index=True).sum()
    del events, session
    gc.collect()
    spec = MODELS[model]
    params = dict(spec["params"])
    if spec["cls"] != "VSKNNRecommender":
        params["device"] = device
    estimator = getattr(sessionrec, spec["cls"])(**params)
    before_kib = _rss_kib("VmRSS")
    peak_reset = _reset_peak()
    start = time.perf_counter()
    estimator.fit(train)
    fit_s = time.perf_counter() - start
    peak_kib = _rss_kib("VmHWM")
    gc.collect()
    after_kib = _rss_kib("VmRSS")  # what the fitted model keeps
    history = getattr(estimator, "history_", None)
    events_per_s = history[-1]["events_per_s"] if history else len(train) / fit_s
    epoch_s = history[-1]["seconds"] if history else fit_s
    start = time.perf_counter()
    result = evaluate(estimator, test, cutoffs=(20,))
    eval_s = time.perf_counter() - start
    n_targets = int(result["n_targets"]) if "n_targets" in result else np.nan
    return dict(model=model, events=len(train), items=int(train["ItemId"].nunique()),
                generate_s=generate_s, fit_s=fit_s, epoch_s=epoch_s,
                events_per_s=events_per_s, peak_rss_mb=peak_kib / 1024,
                before_rss_mb=before_kib / 1024, peak_reset=peak_reset,
                bytes_per_event=(peak_kib - before_kib) * 1024 / len(train),
                kept_bytes_per_event=(after_kib - before_kib) * 1024 / len(train),
                frame_bytes_per_event=frame_bytes / len(train),
                eval_targets=n_targets, targets_per_s=n_targets / eval_s,
                recall=float(result["recall@20"]), mrr=float(result["mrr@20"]),
                threads=torch.get_num_threads())


def run_child(model, n_events, n_items, args) -> dict:
    command = [sys.executable, __file__, "--child", model, str(n_events), str(n_items),
               "--test-events", str(args.test_events), "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return dict(model=model, events=n_events, items=n_items,
                    error=(done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (f"{'model':<15} {'events':>10} {'items':>8} {'epoch s':>8} {'events/s':>9} "
            f"{'peak RSS MB':>11} {'B/event':>8} {'kept B/ev':>9} {'frame B/ev':>10} "
            f"{'targets/s':>9} "
            f"{'R@20':>6} {'MRR@20':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['model']:<15} {r['events']:>10,} {r['items']:>8,} "
                         f"failed: {r['error']}")
            continue
        lines.append(
            f"{r['model']:<15} {r['events']:>10,} {r['items']:>8,} {r['epoch_s']:>8.1f} "
            f"{r['events_per_s']:>9,.0f} {r['peak_rss_mb']:>11,.0f} "
            f"{r['bytes_per_event']:>8.1f} {r.get('kept_bytes_per_event', float('nan')):>9.1f} "
            f"{r['frame_bytes_per_event']:>10.1f} "
            f"{r['targets_per_s']:>9,.0f} {r['recall']:>6.3f} {r['mrr']:>6.3f}")
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """Per model: events/s and bytes per event of the largest shape over the smallest."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        done = [r for r in rows if r["model"] == model and "error" not in r]
        if len(done) < 2:
            continue
        small, large = done[0], done[-1]
        line = (f"{model}: from {small['events']:,} events x {small['items']:,} items to "
                f"{large['events']:,} x {large['items']:,}: training events/s x"
                f"{large['events_per_s'] / small['events_per_s']:.2f}, targets/s x"
                f"{large['targets_per_s'] / small['targets_per_s']:.2f}")
        if large["items"] == small["items"] and large["events"] > small["events"]:
            # What one more event costs: the growth of the fit's memory over the growth
            # of the events (the fixed part, item tables and buffers, drops out).
            added = (large["bytes_per_event"] * large["events"]
                     - small["bytes_per_event"] * small["events"])
            line += (f", memory per added event "
                     f"{added / (large['events'] - small['events']):.1f} bytes")
        lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="1M,3M,10M,30M")
    parser.add_argument("--items", default="40k")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--test-events", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="the smallest shapes: 50k events, 3k items")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "EVENTS", "ITEMS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, n_events, n_items = args.child
        print(json.dumps(measure(model, int(n_events), int(n_items), args.test_events,
                                 args.device)))
        return
    if args.smoke:
        args.events, args.items, args.test_events = "50k", "3k", 2000
    from _machine import machine_line

    print(machine_line(), f"| cores {os.cpu_count()}", flush=True)
    rows = []
    for model in args.models.split(","):
        for n_items in map(parse_size, args.items.split(",")):
            for n_events in map(parse_size, args.events.split(",")):
                rows.append(run_child(model, n_events, n_items, args))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print()
    print(table(rows))
    print()
    print(growth(rows))


if __name__ == "__main__":
    main()
