"""Screenshots of the built site in headless Chromium: ``make docs-screenshots``.

Serves ``docs/_build/html`` on 127.0.0.1 and photographs the index, an API page and a
gallery page (or the pages given), so that a reviewer sees the site as a browser draws
it. Needs Chromium (Debian: ``apt-get install chromium``); the flags keep it off the
network, which the machines we build on do not have.

    python docs/screenshots.py [--out docs/_build/screenshots] [PAGE ...]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

HTML = Path(__file__).resolve().parent / "_build" / "html"
PAGES = ["index.html", "generated/sessionrec.GRU4RecRecommender.html",
         "auto_examples/plot_metrics_at_k.html"]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,2000"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per file the browser fetches: noise here
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pages", nargs="*", default=PAGES,
                        help="paths under docs/_build/html (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=HTML.parent / "screenshots")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        print("Chromium not found (Debian: apt-get install chromium).", file=sys.stderr)
        return 2
    if not (HTML / "index.html").exists():
        print(f"{HTML} has no site: run `make docs` or `make docs-fast` first.",
              file=sys.stderr)
        return 2
    handler = functools.partial(_QuietHandler, directory=str(HTML))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    try:
        for page in args.pages:
            if not (HTML / page).exists():
                print(f"missing page: {page}", file=sys.stderr)
                failed += 1
                continue
            png = args.out / (page.replace("/", "_").removesuffix(".html") + ".png")
            with tempfile.TemporaryDirectory() as profile:
                subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}",
                                f"--screenshot={png}",
                                f"http://127.0.0.1:{server.server_port}/{page}"],
                               capture_output=True, timeout=120)
            if png.exists() and png.stat().st_size > 10_000:
                print(f"{png} ({png.stat().st_size:,} bytes)")
            else:
                print(f"no screenshot of {page}", file=sys.stderr)
                failed += 1
    finally:
        server.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
