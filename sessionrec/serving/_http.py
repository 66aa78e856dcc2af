"""The HTTP service of live sessions (``pip install sessionrec[serve]``).

FastAPI and uvicorn, because they are the Python ecosystem's standard for a small JSON
service: FastAPI validates every request against a declared schema (a malformed body is
a 422 with the offending field named, without code of ours) and documents the API at
``/docs``; uvicorn is the ASGI server FastAPI is deployed with. Requests run in
FastAPI's thread pool, on one :class:`~sessionrec.serving.LiveSessions`, whose calls are
thread-safe.

Endpoints (JSON in, JSON out):

* ``POST /click``: ``{"session", "item", "k"=20, "user"=null, "time"=null,
  "exclude_seen"=false}`` -> ``{"session", "items", "scores"}``;
* ``POST /clicks``: ``{"clicks": [{"session", "item", "user", "time"}, ...], "k",
  "exclude_seen"}`` -> ``{"results": [{"session", "items", "scores"}, ...]}``, one
  vectorised step for the batch;
* ``DELETE /sessions/{session}``: ends a session (404 if it is not live);
* ``GET /health``: the model and the number of live sessions; ``GET /stats``: the
  counts of :class:`~sessionrec.serving.LiveStats`.

Bad input (an item label of the wrong type, a missing user for HRNN, ``k`` < 1, a time
that goes back) is a 400 with ``{"detail": message}``, the message of the error the same
call raises in process.
"""


# No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations
# to find their request models, which are local classes of create_app.
import dataclasses
from pathlib import Path

from ._live import LiveSessions

__all__ = ["create_app", "serve", "load_model"]

# JSON labels: numbers or strings (the kind must match the training labels').
Label = int | float | str


def _require():
    try:
        import fastapi  # noqa: F401
        import pydantic  # noqa: F401
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ImportError(
            "the HTTP service needs FastAPI and uvicorn: pip install 'sessionrec[serve]'"
        ) from error


def load_model(path):
    """A fitted recommender from a joblib file (``joblib.dump(model, path)``)."""
    import joblib

    from .._base import SessionRecommender

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    model = joblib.load(path)
    if not isinstance(model, SessionRecommender):
        raise TypeError(f"{path} holds a {type(model).__name__}, not a sessionrec "
                        "recommender.")
    return model


def create_app(model, **live_kwargs):
    """A FastAPI application answering live sessions' clicks.

    Parameters
    ----------
    model : fitted recommender, or str or path-like
        The model, or the path of a joblib file holding one.
    **live_kwargs
        ``max_sessions``, ``idle_timeout``, ... of :class:`~sessionrec.serving.
        LiveSessions`.

    Returns
    -------
    fastapi.FastAPI
        Serve it with uvicorn (:func:`serve`, or ``sessionrec serve model.joblib``); its
        ``state.live`` is the :class:`~sessionrec.serving.LiveSessions`.

    Examples
    --------
    >>> from sessionrec import SessionPopularityRecommender
    >>> from sessionrec.datasets import make_sessions
    >>> from sessionrec.serving import create_app
    >>> model = SessionPopularityRecommender().fit(make_sessions(n_sessions=50,
    ...                                                          random_state=0))
    >>> app = create_app(model, max_sessions=10_000)
    >>> sorted(r.path for r in app.routes if r.path.startswith(("/click", "/sessions")))
    ['/click', '/clicks', '/sessions/{session}']
    """
    _require()
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, Field

    if isinstance(model, (str, Path)):
        model = load_model(model)
    live = LiveSessions(model, **live_kwargs)

    class Click(BaseModel):
        session: Label
        item: Label
        user: Label | None = None
        time: float | None = None

    class ClickRequest(Click):
        k: int = Field(20, ge=1)
        exclude_seen: bool = False

    class ClicksRequest(BaseModel):
        clicks: list[Click]
        k: int = Field(20, ge=1)
        exclude_seen: bool = False

    app = FastAPI(title="sessionrec live sessions",
                  description=f"{type(model).__name__} over {model.n_items_} items")
    app.state.live = live

    @app.exception_handler(ValueError)
    @app.exception_handler(TypeError)
    async def bad_input(request: Request, error: Exception):
        return JSONResponse(status_code=400, content={"detail": str(error)})

    def lists(session, items, scores) -> dict:
        return {"session": session, "items": items.tolist(), "scores": scores.tolist()}

    @app.post("/click")
    def click(body: ClickRequest) -> dict:
        got = live.click(body.session, body.item, body.k, user=body.user, time=body.time,
                         exclude_seen=body.exclude_seen)
        return lists(body.session, got.items, got.scores)

    @app.post("/clicks")
    def clicks(body: ClicksRequest) -> dict:
        rows = body.clicks
        got = live.clicks([c.session for c in rows], [c.item for c in rows], body.k,
                          users=[c.user for c in rows], times=[c.time for c in rows],
                          exclude_seen=body.exclude_seen)
        return {"results": [lists(c.session, items, scores)
                            for c, items, scores in zip(rows, got.items, got.scores)]}

    @app.delete("/sessions/{session}")
    def end(session: str) -> dict:
        # A path holds text: a session labelled by a number is found by that number.
        for label in _labels_of(session):
            if live.end(label):
                return {"session": label, "ended": True}
        raise HTTPException(status_code=404, detail=f"session {session!r} is not live")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": type(model).__name__, "n_items": model.n_items_,
                "sessions": len(live)}

    @app.get("/stats")
    def stats() -> dict:
        return dataclasses.asdict(live.stats)

    return app


def _labels_of(text: str) -> list:
    """The labels a path segment may stand for: the text, then the number it spells."""
    labels: list = [text]
    try:
        labels.append(int(text))
    except ValueError:
        try:
            labels.append(float(text))
        except ValueError:
            pass
    return labels


def serve(model, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **live_kwargs) -> None:
    """Serve :func:`create_app` of ``model`` with uvicorn until interrupted."""
    _require()
    import uvicorn

    uvicorn.run(create_app(model, **live_kwargs), host=host, port=port,
                log_level=log_level)
