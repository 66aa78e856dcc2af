"""The HTTP service of live sessions: a real uvicorn server on loopback, a real HTTP
client (urllib), and the ``sessionrec serve`` command."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import joblib
import numpy as np
import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from sessionrec import GRU4RecRecommender, HRNNRecommender  # noqa: E402
from sessionrec.serving import LiveSessions, create_app  # noqa: E402

from .estimator_checks import make  # noqa: E402


def request(base: str, method: str, path: str, body=None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


class Server:
    """uvicorn serving ``app`` on 127.0.0.1 in a thread, on a free port."""

    def __init__(self, app):
        # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say they
        # are TCP (else every answer waits 40 ms for a delayed acknowledgement).
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run,
                                       kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
        assert not self.thread.is_alive()


@pytest.fixture(scope="module")
def gru4rec(train_test):
    return make(GRU4RecRecommender).fit(train_test[0])


def test_http_clicks_equal_in_process_clicks(gru4rec, train_test):
    _, test = train_test
    sessions = test[test["SessionId"].isin(test["SessionId"].unique()[:5])]
    local = LiveSessions(gru4rec)
    expected = [local.click(r.SessionId, r.ItemId, k=5, time=r.Time)
                for r in sessions.itertuples()]
    with Server(create_app(gru4rec)) as server:
        status, health = request(server.base, "GET", "/health")
        assert status == 200 and health["model"] == "GRU4RecRecommender"
        half = len(sessions) // 2
        got = []
        for r in sessions.iloc[:half].itertuples():  # one click per request
            status, body = request(server.base, "POST", "/click", {
                "session": int(r.SessionId), "item": int(r.ItemId), "k": 5,
                "time": float(r.Time)})
            assert status == 200 and body["session"] == r.SessionId
            got.append(body)
        rest = sessions.iloc[half:]  # the others in one batch
        status, body = request(server.base, "POST", "/clicks", {"k": 5, "clicks": [
            {"session": int(r.SessionId), "item": int(r.ItemId), "time": float(r.Time)}
            for r in rest.itertuples()]})
        assert status == 200 and len(body["results"]) == len(rest)
        got += body["results"]
        for want, have in zip(expected, got, strict=True):
            assert have["items"] == want.items.tolist()
            np.testing.assert_allclose(have["scores"], want.scores, rtol=1e-6)
        first = int(sessions["SessionId"].iloc[0])
        assert request(server.base, "DELETE", f"/sessions/{first}") == (
            200, {"session": first, "ended": True})
        assert request(server.base, "DELETE", f"/sessions/{first}")[0] == 404
        status, stats = request(server.base, "GET", "/stats")
        assert stats["clicks"] == len(sessions) and stats["ended"] == 1


def test_http_bad_input_is_a_4xx_with_a_message(gru4rec):
    with Server(create_app(gru4rec)) as server:
        bad = [
            ({"session": 1, "item": "not-an-item"}, 400, "str label"),
            ({"session": 1, "item": 3, "k": 0}, 422, "greater than or equal"),
            ({"session": 1}, 422, "item"),
            ({"session": [1], "item": 3}, 422, "session"),
        ]
        for body, code, match in bad:
            status, answer = request(server.base, "POST", "/click", body)
            assert status == code, (body, answer)
            assert match in json.dumps(answer)
        request(server.base, "POST", "/click", {"session": 1, "item": 3, "time": 100.0})
        status, answer = request(server.base, "POST", "/click",
                                 {"session": 1, "item": 3, "time": 50.0})
        assert status == 400 and "earlier than its previous click" in answer["detail"]
        status, answer = request(server.base, "POST", "/clicks", {"clicks": [{"item": 3}]})
        assert status == 422


def test_http_users_for_hrnn(train_test):
    train, test = train_test
    model = make(HRNNRecommender).fit(train)
    with Server(create_app(model)) as server:
        status, answer = request(server.base, "POST", "/click", {"session": 1, "item": 3})
        assert status == 400 and "user is missing" in answer["detail"]
        status, answer = request(server.base, "POST", "/click",
                                 {"session": 1, "item": 3, "user": 2, "k": 4})
        assert status == 200 and len(answer["items"]) == 4


def test_sessionrec_serve_starts_from_a_joblib_file(gru4rec, tmp_path):
    path = tmp_path / "model.joblib"
    joblib.dump(gru4rec, path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "sessionrec", "serve", str(path), "--port", str(port),
         "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[1].decode()
            try:
                status, health = request(base, "GET", "/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "sessionrec serve did not start"
                time.sleep(0.1)
        assert status == 200 and health["n_items"] == gru4rec.n_items_
        status, answer = request(base, "POST", "/click", {"session": "a", "item": 3, "k": 3})
        assert status == 200 and len(answer["items"]) == 3
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_sessionrec_serve_refuses_a_file_without_a_model(tmp_path):
    from sessionrec.cli import main

    path = tmp_path / "numbers.joblib"
    joblib.dump([1, 2, 3], path)
    assert main(["serve", str(path)]) == 2
    assert main(["serve", str(tmp_path / "missing.joblib")]) == 2


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("sessionrec") == "sessionrec.cli:main"
