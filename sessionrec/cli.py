"""The ``sessionrec`` command line (``sessionrec serve model.joblib``).

Examples
--------
>>> parser = build_parser()
>>> args = parser.parse_args(["serve", "model.joblib", "--port", "9000"])
>>> args.command, args.model, args.port, args.host
('serve', 'model.joblib', 9000, '127.0.0.1')
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``sessionrec`` command."""
    parser = argparse.ArgumentParser(prog="sessionrec",
                                     description="sessionrec's command line tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="answer live sessions' clicks over HTTP (needs sessionrec[serve])",
        description="Serve a fitted model's live sessions over HTTP: POST /click, "
                    "POST /clicks, DELETE /sessions/{id}, GET /health, GET /stats "
                    "(API documentation at /docs).")
    serve.add_argument("model", help="a joblib file holding a fitted recommender")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--max-sessions", type=int, default=100_000,
                       help="sessions kept at most (default: 100000)")
    serve.add_argument("--idle-timeout", type=float, default=1800.0,
                       help="seconds without a click before a session is forgotten "
                            "(default: 1800; 0 keeps them)")
    serve.add_argument("--log-level", default="info",
                       choices=["critical", "error", "warning", "info", "debug"])
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``sessionrec`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from .serving._http import load_model, serve

        try:
            model = load_model(args.model)
        except (OSError, TypeError) as error:
            print(f"sessionrec serve: {error}", file=sys.stderr)
            return 2
        print(f"sessionrec serve: {type(model).__name__} over {model.n_items_} items on "
              f"http://{args.host}:{args.port} (API at /docs)", file=sys.stderr, flush=True)
        serve(model, host=args.host, port=args.port, log_level=args.log_level,
              max_sessions=args.max_sessions,
              idle_timeout=args.idle_timeout if args.idle_timeout > 0 else None)
    return 0
