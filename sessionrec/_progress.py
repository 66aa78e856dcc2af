"""What a fit shows under ``verbose``, one decision for every model: progress bars and
one line per epoch or phase.

A bar is shown only when ``verbose`` is set and standard error is a terminal (tqdm's
``disable=None``), so logs and CI output get the per-epoch log lines alone. Bars are
left off the screen when they end (``leave=False``), so the epoch's log line replaces
its bar instead of being interleaved with it.
"""

from __future__ import annotations

import logging
import sys

from tqdm.auto import tqdm

__all__ = ["epoch_bar", "report"]


def report(verbose, logger: logging.Logger, message: str) -> None:
    """Say ``message`` about a fit: on standard error under ``verbose`` (the user asked
    to see it, whatever logging the application configured: scikit-learn's estimators
    print their ``verbose`` output too), and always to ``logger`` (the calling module's)
    at DEBUG level, for applications that collect it. Nothing here configures logging.

    Examples
    --------
    >>> report(False, logging.getLogger("sessionrec"), "quiet")
    """
    logger.debug(message)
    if verbose:
        print(f"[sessionrec] {message}", file=sys.stderr, flush=True)


def epoch_bar(verbose, total: int, description: str, unit: str = "batch"):
    """A progress bar over the ``total`` mini-batches of one epoch, or None (not verbose).

    Examples
    --------
    >>> epoch_bar(False, 100, "GRU4Rec epoch 1/10") is None
    True
    """
    if not verbose or total <= 0:
        return None
    return tqdm(total=total, desc=description, unit=unit, leave=False, disable=None,
                dynamic_ncols=True, mininterval=0.25)
