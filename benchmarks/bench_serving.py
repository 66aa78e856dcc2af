"""Live sessions' speed: per-click latency and clicks/s, in process and over HTTP.

For each data set and model: fit, then replay the test sessions click by click through
:class:`sessionrec.serving.LiveSessions` and print, per way of clicking,

* ``single``: one ``click()`` per click, its latency's p50 and p99 and the clicks/s;
* ``batched``: ``clicks()`` with one click of each of ``--batch`` concurrent sessions, a
  session that ends replaced by the next test session (as a server that batches the
  clicks of its concurrent visitors sees them); p50 and p99 of a full batch, clicks/s
  over all batches;
* ``2nd`` / ``100th``: the p50 latency of a session's 2nd and 100th click (sessions of
  100 random known items): whether a click's cost grows with the session's length;
* ``http single`` / ``http batched``: the same through the HTTP service (uvicorn on
  127.0.0.1 in this process, one keep-alive connection; JSON both ways);
* ``predict_next``: for comparison, one ``predict_next`` call per click on the
  session's events so far (what a server without kept state does).

Data (``--runs``): ``rsc15`` (../shared/data/rsc15-100k: train_full, the test
sessions replayed), ``synthetic-40k`` and ``synthetic-1m`` (``make_sessions`` with
sessions over 40,000 or 1,000,000 items, every item in at least one training session;
2% of the sessions replayed). Models (``--models``): ``gru4rec`` (the rsc15 settings:
100 units, cross-entropy, 2048 samples; ``--epochs``), ``vsknn``, ``spop``.

Usage::

    python benchmarks/bench_serving.py [--runs rsc15,synthetic-40k,synthetic-1m]
        [--models gru4rec,vsknn,spop] [--clicks 2000] [--batch 256] [--k 20]
        [--epochs 1] [--no-http]
"""

from __future__ import annotations

import argparse
import http.client
import json
import resource
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from _data import SHARED_DATA  # noqa: E402
from _machine import machine_line  # noqa: E402

from sessionrec import (  # noqa: E402
    GRU4RecRecommender,
    SessionPopularityRecommender,
    VSKNNRecommender,
)
from sessionrec.datasets import make_sessions, read_gru4rec_tsv  # noqa: E402
from sessionrec.serving import LiveSessions  # noqa: E402

MODELS = {
    "gru4rec": lambda epochs: GRU4RecRecommender(
        loss="cross-entropy", constrained_embedding=True, layers=(100,), batch_size=32,
        dropout_p_hidden=0.4, learning_rate=0.2, momentum=0.2, n_sample=2048,
        sample_alpha=0.5, logq=1.0, n_epochs=epochs, device="cpu", random_state=0),
    "vsknn": lambda epochs: VSKNNRecommender(device="cpu"),
    "spop": lambda epochs: SessionPopularityRecommender(device="cpu"),
}


def load(run: str):
    """(train, replayed test events) of a run."""
    if run == "rsc15":
        folder = SHARED_DATA / "rsc15-100k"
        if not folder.is_dir():
            raise SystemExit(f"rsc15-100k not found at {folder}")
        return (read_gru4rec_tsv(folder / "yoochoose-clicks-100k_train_full.txt"),
                read_gru4rec_tsv(folder / "yoochoose-clicks-100k_test.txt"))
    n_items = {"synthetic-40k": 40_000, "synthetic-1m": 1_000_000}[run]
    events = make_sessions(n_sessions=max(20_000, n_items // 20), n_items=n_items,
                           mean_length=5.0, max_length=50, random_state=0)
    last = events.groupby("SessionId")["Time"].transform("max")
    cut = last.quantile(0.98)
    train, test = events[last <= cut], events[last > cut]
    # Every item in training: sessions of ten consecutive items, before the others.
    cover = pd.DataFrame({"SessionId": -1 - np.arange(n_items) // 10,
                          "ItemId": np.arange(n_items),
                          "Time": events["Time"].min() - 1e6 + np.arange(n_items)})
    return pd.concat([cover, train], ignore_index=True), test


def percentiles(seconds) -> tuple[float, float]:
    ms = np.asarray(seconds) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def replay_order(test: pd.DataFrame, n_clicks: int) -> pd.DataFrame:
    """Test clicks in time order (sessions interleave as they would live)."""
    ordered = test.sort_values(["Time", "SessionId"], kind="stable")
    return ordered.iloc[:n_clicks]


def single(live: LiveSessions, clicks: pd.DataFrame, k: int) -> dict:
    times = []
    for r in clicks.itertuples():
        start = time.perf_counter()
        live.click(r.SessionId, r.ItemId, k, time=r.Time)
        times.append(time.perf_counter() - start)
    p50, p99 = percentiles(times)
    return {"p50 ms": p50, "p99 ms": p99, "clicks/s": len(times) / sum(times)}


def batched(live: LiveSessions, test: pd.DataFrame, k: int, batch: int,
            n_clicks: int) -> dict:
    """``batch`` concurrent sessions, each batch one click of each; a session that ends
    is replaced by the next test session (so batches stay full), as a server batching
    the clicks of its concurrent visitors would see them."""
    sessions = [g[["SessionId", "ItemId", "Time"]].to_numpy(dtype=object)
                for _, g in test.groupby("SessionId", sort=False)]
    # The test sessions again under new labels until there are clicks enough: the pool
    # of concurrent sessions stays full to the end.
    waiting, copy = [], 0
    while sum(len(e) for e in waiting) < n_clicks + batch * 50:
        for events in sessions:
            renamed = events.copy()
            renamed[:, 0] = [(copy, label) for label in events[:, 0]]
            waiting.append(renamed)
        copy += 1
    waiting.reverse()
    active = [[waiting.pop(), 0] for _ in range(min(batch, len(waiting)))]
    times, sizes = [], []
    while active and sum(sizes) < n_clicks:
        rows = [events[at] for events, at in active]
        begin = time.perf_counter()
        live.clicks([r[0] for r in rows], [r[1] for r in rows], k,
                    times=[float(r[2]) for r in rows])
        times.append(time.perf_counter() - begin)
        sizes.append(len(rows))
        still = []
        for events, at in active:
            if at + 1 < len(events):
                still.append([events, at + 1])
            elif waiting:
                still.append([waiting.pop(), 0])
        active = still
    full = [t for t, n in zip(times, sizes) if n == batch]
    return {"p50 ms": float(np.median(full)) * 1e3 if full else float("nan"),
            "p99 ms": float(np.percentile(full, 99)) * 1e3 if full else float("nan"),
            "clicks/s": sum(sizes) / sum(times)}


def by_position(live: LiveSessions, items: np.ndarray, k: int, n_sessions: int = 30
                ) -> tuple[float, float]:
    """p50 latency of the 2nd and of the 100th click of 100-click sessions."""
    rng = np.random.default_rng(0)
    second, hundredth = [], []
    for s in range(n_sessions):
        label = f"long-{s}"
        for position, item in enumerate(rng.choice(items, size=100), start=1):
            start = time.perf_counter()
            live.click(label, item, k, time=float(position))
            took = time.perf_counter() - start
            if position == 2:
                second.append(took)
            elif position == 100:
                hundredth.append(took)
        live.end(label)
    return float(np.median(second)) * 1e3, float(np.median(hundredth)) * 1e3


def predict_next_per_click(model, clicks: pd.DataFrame, k: int, limit: int = 200) -> dict:
    seen: dict = {}
    times = []
    for r in clicks.iloc[:limit].itertuples():
        rows = seen.setdefault(r.SessionId, [])
        rows.append((r.SessionId, r.ItemId, r.Time))
        frame = pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])
        start = time.perf_counter()
        model.predict_next(frame, k)
        times.append(time.perf_counter() - start)
    p50, p99 = percentiles(times)
    return {"p50 ms": p50, "p99 ms": p99, "clicks/s": len(times) / sum(times)}


class _Server:
    def __init__(self, app):
        import uvicorn

        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they are
        # TCP (else every answer waits 40 ms for a delayed acknowledgement).
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join()
        self.socket.close()


def http_runs(model, clicks: pd.DataFrame, k: int, batch: int) -> tuple[dict, dict]:
    from sessionrec.serving import create_app

    rows = [{"session": int(r.SessionId) if isinstance(r.SessionId, (int, np.integer))
             else str(r.SessionId), "item": r.ItemId.item() if hasattr(r.ItemId, "item")
             else r.ItemId, "time": float(r.Time)} for r in clicks.itertuples()]
    with _Server(create_app(model)) as server:
        connection = http.client.HTTPConnection("127.0.0.1", server.port)
        connection.connect()
        # Headers and body leave in separate writes: without TCP_NODELAY the second
        # waits for the server's delayed acknowledgement (40 ms), a client artefact.
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"Content-Type": "application/json"}

        def post(path, body):
            connection.request("POST", path, json.dumps(body), headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
            return json.loads(data)

        times = []
        half = len(rows) // 2
        for row in rows[:half]:
            start = time.perf_counter()
            post("/click", {**row, "k": k})
            times.append(time.perf_counter() - start)
        p50, p99 = percentiles(times)
        one = {"p50 ms": p50, "p99 ms": p99, "clicks/s": len(times) / sum(times)}
        start, n = time.perf_counter(), 0
        for begin in range(half, len(rows), batch):
            part = rows[begin:begin + batch]
            post("/clicks", {"clicks": part, "k": k})
            n += len(part)
        many = {"p50 ms": float("nan"), "p99 ms": float("nan"),
                "clicks/s": n / (time.perf_counter() - start)}
        connection.close()
    return one, many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="rsc15,synthetic-40k")
    parser.add_argument("--models", default="gru4rec,vsknn,spop")
    parser.add_argument("--clicks", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--no-http", action="store_true")
    args = parser.parse_args()
    print(machine_line())
    header = (f"{'data':<14} {'model':<8} {'items':>9} {'way':<14} {'p50 ms':>8} "
              f"{'p99 ms':>8} {'clicks/s':>10}")
    print(header)
    print("-" * len(header))
    for run in args.runs.split(","):
        train, test = load(run)
        for name in args.models.split(","):
            model = MODELS[name](args.epochs)
            start = time.perf_counter()
            model.fit(train)
            fit_s = time.perf_counter() - start
            clicks = replay_order(test, args.clicks)
            rows = {}
            rows["single"] = single(LiveSessions(model), clicks, args.k)
            live = LiveSessions(model)
            rows["batched"] = batched(live, test, args.k, args.batch,
                                      max(args.clicks, 16 * args.batch))
            second, hundredth = by_position(LiveSessions(model),
                                            model.item_index_.labels.to_numpy(), args.k)
            rows["2nd click"] = {"p50 ms": second, "p99 ms": float("nan"),
                                 "clicks/s": float("nan")}
            rows["100th click"] = {"p50 ms": hundredth, "p99 ms": float("nan"),
                                   "clicks/s": float("nan")}
            if not args.no_http:
                rows["http single"], rows["http batched"] = http_runs(
                    model, clicks, args.k, args.batch)
            rows["predict_next"] = predict_next_per_click(model, clicks, args.k)
            for way, row in rows.items():
                print(f"{run:<14} {name:<8} {model.n_items_:>9,} {way:<14} "
                      f"{row['p50 ms']:>8.3f} {row['p99 ms']:>8.3f} {row['clicks/s']:>10,.0f}")
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{'':<14} {name:<8} fit {fit_s:.1f} s, peak RSS so far {rss:,.0f} MB; "
                  f"batched p50/p99 ms: per full batch of {args.batch}", flush=True)


if __name__ == "__main__":
    main()
