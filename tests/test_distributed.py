"""Data-parallel training with torch.distributed (gloo on loopback, CPU ranks).

The rank-level pieces are checked in one process (a gloo group of one rank, and the
schedule's shares); the real thing runs under ``torchrun`` with two ranks on rsc15-100k
and must land within 2% of one process at the same global batch size.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from sessionrec import GRU4RecRecommender, HRNNRecommender, ParallelRNNRecommender
from sessionrec._batching import session_parallel_schedule, user_parallel_schedule
from sessionrec._events import to_session_events
from sessionrec.datasets import make_sessions
from sessionrec.evaluation import evaluate
from sessionrec.nn._distributed import rank_share

from .conftest import REPO, SHARED_DATA, free_port

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)



@pytest.fixture
def one_rank_group(monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("batch_size, world_size", [(8, 2), (7, 3), (1, 2), (64, 4)])
@pytest.mark.parametrize("users", [False, True])
def test_rank_shares_partition_the_schedule(batch_size, world_size, users):
    frame = make_sessions(n_sessions=300, n_items=50, n_users=40 if users else None,
                          random_state=0)
    events, _ = to_session_events(frame, user_key="UserId" if users else None)
    schedule = (user_parallel_schedule(events, batch_size) if users
                else session_parallel_schedule(events, batch_size))
    shares = [rank_share(schedule, r, world_size) for r in range(world_size)]
    every = np.sort(np.concatenate([s.positions for s in shares]))
    np.testing.assert_array_equal(every, np.sort(schedule.positions))
    for share in shares:
        assert share.n_steps == schedule.n_steps
        # Replaying the share: a slot's next entry continues its stream (the next event
        # of its session) unless a session starts, so states never cross ranks.
        previous = None
        for t in range(share.n_steps):
            a, b = share.step_offsets[t], share.step_offsets[t + 1]
            now = share.positions[a:b]
            if previous is not None:
                if t in share.shrink:
                    previous = previous[share.shrink[t]]
                assert len(previous) == len(now)
                going_on = ~share.session_start[a:b]
                np.testing.assert_array_equal(now[going_on], previous[going_on] + 1)
            previous = now


def test_distributed_needs_a_process_group():
    events = make_sessions(n_sessions=50, n_items=20, random_state=0)
    model = GRU4RecRecommender(layers=(8,), n_epochs=1, distributed=True, random_state=0)
    with pytest.raises(RuntimeError, match="distributed=True.*torchrun"):
        model.fit(events)
    assert not hasattr(model, "network_")


@pytest.mark.parametrize("make", [
    lambda: GRU4RecRecommender(layers=(16,), batch_size=16, n_sample=32, n_epochs=2,
                               momentum=0.3, random_state=0),
    lambda: GRU4RecRecommender(layers=(16,), loss="bpr-max", constrained_embedding=False,
                               batch_size=16, n_sample=32, n_epochs=2, momentum=0.3,
                               random_state=0),
    lambda: ParallelRNNRecommender(hidden_size=16, batch_size=16, n_epochs=2,
                                   random_state=0),
    lambda: HRNNRecommender(session_size=16, user_size=16, batch_size=16, n_sample=32,
                            dropout_p_session=0.0,
                            n_epochs=2, random_state=0),
], ids=["gru4rec-xent", "gru4rec-bpr-max", "prnn", "hrnn"])
def test_one_rank_trains_as_one_process(make, one_rank_group):
    """A group of one rank merges nothing: the same schedule, the same samples and the
    same updates as a plain fit (without dropout, whose masks have a generator per
    rank)."""
    users = isinstance(make(), HRNNRecommender)
    features = isinstance(make(), ParallelRNNRecommender)
    events = make_sessions(n_sessions=300, n_items=60, n_users=30 if users else None,
                           return_item_features=features, random_state=1)
    kwargs = {}
    if features:
        events, kwargs["item_features"] = events
    plain = make().set_params(device="cpu").fit(events, **kwargs)
    ranked = make().set_params(device="cpu", distributed=True).fit(events, **kwargs)
    for a, b in zip(plain.network_.parameters(), ranked.network_.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert ranked.history_[-1]["loss"] == pytest.approx(plain.history_[-1]["loss"], rel=1e-4)
    assert evaluate(ranked, events, cutoffs=(20,))["recall@20"] == pytest.approx(
        evaluate(plain, events, cutoffs=(20,))["recall@20"], abs=0.01)


def test_dropout_trains_on_one_rank(one_rank_group):
    events = make_sessions(n_sessions=300, n_items=60, random_state=1)
    model = GRU4RecRecommender(layers=(16,), batch_size=16, n_sample=32, n_epochs=3,
                               dropout_p_hidden=0.2, dropout_p_embed=0.2, device="cpu",
                               distributed=True, random_state=0).fit(events)
    losses = [record["loss"] for record in model.history_]
    assert np.isfinite(losses).all() and losses[-1] < model.history_[0]["start_loss"]


def run_ranks(tmp_path, n_ranks: int, epochs: int) -> dict:
    out = tmp_path / f"ranks{n_ranks}.json"
    env = {**os.environ, "SESSIONREC_SHARED_DATA": str(SHARED_DATA)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={n_ranks}", str(REPO / "examples" / "ddp_gru4rec.py"),
               "--rank-job", f"--epochs={epochs}", f"--out={out}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.realdata
def test_two_gloo_ranks_match_one_process_on_rsc15(tmp_path):
    if not (SHARED_DATA / "rsc15-100k").is_dir():
        pytest.skip(f"needs rsc15-100k under {SHARED_DATA}")
    sys.path.insert(0, str(REPO / "examples"))
    try:
        from _data import rsc15_or_synthetic
        from ddp_gru4rec import fit_and_score
    finally:
        sys.path.remove(str(REPO / "examples"))
    _, train, test = rsc15_or_synthetic()
    one, _ = fit_and_score(train, test, epochs=2, distributed=False)
    two = run_ranks(tmp_path, 2, epochs=2)
    assert two["ranks"] == 2
    assert two["recall"] == pytest.approx(one["recall"], rel=0.02)
    assert two["mrr"] == pytest.approx(one["mrr"], rel=0.02)
    assert two["loss"] == pytest.approx(one["loss"], rel=0.02)
    # The model rank 0 saved loads and predicts in a process without any group.
    import joblib

    model = joblib.load(tmp_path / "ranks2.joblib")
    assert evaluate(model, test, cutoffs=(20,))["mrr@20"] == pytest.approx(two["mrr"])


@pytest.mark.slow
@pytest.mark.realdata
def test_the_scaling_guides_torchrun_script_runs_as_shown(tmp_path):
    """docs/scaling.md's ``train.py`` (its ```python torchrun block), launched with two
    gloo ranks from a folder that has ``../shared/data`` beside it."""
    if not (SHARED_DATA / "rsc15-100k").is_dir():
        pytest.skip(f"needs rsc15-100k under {SHARED_DATA}")
    text = (REPO / "docs" / "scaling.md").read_text()
    blocks = re.findall(r"^```python torchrun\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "data").symlink_to(SHARED_DATA.resolve())
    (work / "train.py").write_text(blocks[0])
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", "train.py"], cwd=work,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    import joblib

    model = joblib.load(work / "gru4rec.joblib")
    assert model.distributed and len(model.history_) == 2


_REPLICA_SCRIPT = '''
import json, sys
import torch
import torch.distributed as dist
from sessionrec import GRU4RecRecommender, HRNNRecommender, ParallelRNNRecommender
from sessionrec.datasets import make_sessions

dist.init_process_group("gloo")
events = make_sessions(n_sessions=400, n_items=80, n_users=40, random_state=2)
plain, features = make_sessions(n_sessions=400, n_items=80, return_item_features=True,
                                random_state=2)
fits = {
    "gru4rec": (GRU4RecRecommender(layers=(16,), loss="bpr-max", batch_size=24,
                                   n_sample=16, dropout_p_hidden=0.3, momentum=0.3,
                                   n_epochs=2, device="cpu", distributed=True),
                plain, {}),
    "hrnn": (HRNNRecommender(session_size=16, user_size=16, batch_size=10, n_sample=16,
                             n_epochs=2, device="cpu", distributed=True), events, {}),
    "prnn": (ParallelRNNRecommender(hidden_size=16, batch_size=24, n_epochs=2,
                                    training="alternating", device="cpu",
                                    distributed=True),
             plain, {"item_features": features}),
}
out = {}
for name, (model, frame, kwargs) in fits.items():
    model.fit(frame, **kwargs)
    flat = torch.cat([p.detach().reshape(-1) for p in model.network_.parameters()])
    out[name] = dict(checksum=float(flat.double().abs().sum()),
                     loss=model.history_[-1]["loss"])
with open(sys.argv[1] + f".{dist.get_rank()}", "w") as f:
    json.dump(out, f)
dist.destroy_process_group()
'''


@pytest.mark.slow
def test_ranks_stay_equal_for_every_recurrent_model(tmp_path):
    """Three gloo ranks (random_state=None: rank 0's seed is broadcast; dropout masks
    differ per rank; ranks run out of slots at different steps): the replicas end
    equal, bit for bit, for GRU4Rec, HRNN and p-RNN."""
    script = tmp_path / "replicas.py"
    script.write_text(_REPLICA_SCRIPT)
    out = tmp_path / "replicas.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=3", str(script), str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"replicas.json.{r}").read_text()) for r in range(3)]
    for name in ranks[0]:
        assert np.isfinite(ranks[0][name]["loss"])
        assert ranks[1][name] == ranks[0][name] == ranks[2][name], name
