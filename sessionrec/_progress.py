"""Progress bars of long fits (``verbose``), one decision for every model.

A bar is shown only when ``verbose`` is set and standard error is a terminal (tqdm's
``disable=None``), so logs and CI output get the per-epoch log lines alone. Bars are
left off the screen when they end (``leave=False``), so the epoch's log line replaces
its bar instead of being interleaved with it.
"""

from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["epoch_bar"]


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
