"""Live sessions: a fitted model answering every click of many sessions, in process or
over HTTP.

:class:`LiveSessions` keeps each session's state between clicks (``click``, the batched
``clicks``, ``end``), bounded by a maximum number of sessions and an idle time-out.
:func:`create_app` serves it over HTTP (``pip install sessionrec[serve]``: FastAPI and
uvicorn), and ``sessionrec serve model.joblib`` starts that server from the command line.
"""

from ._live import LiveSessions, LiveStats, Recommendations

__all__ = ["LiveSessions", "LiveStats", "Recommendations", "create_app"]


def __getattr__(name):
    # The HTTP service imports FastAPI, an optional extra: only when it is asked for.
    if name == "create_app":
        from ._http import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
