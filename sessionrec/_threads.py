"""Thread counts, changed only inside a context and only for the calling thread.

sessionrec changes a thread count in one place, :func:`torch_threads_limited`: while
numpy workers of a scoring pool keep the cores busy (``SessionRecommender._map_blocks``),
torch's kernels in the thread that ranks their blocks run on one thread. The limit is
set through threadpoolctl on the OpenMP runtime that torch's CPU kernels use, whose
thread count belongs to each calling thread: other threads of the process (a threaded
server or a threaded search scoring at the same time) keep theirs, and leaving the
block gives the calling thread its own count back. ``torch.set_num_threads`` is never
called: it would also change the count that threads starting meanwhile inherit.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import ThreadpoolController

__all__ = ["torch_threads_limited"]

_controller: ThreadpoolController | None = None
_controller_lock = threading.Lock()


def _openmp() -> ThreadpoolController:
    """The OpenMP runtimes loaded in the process (found once, when first needed)."""
    global _controller
    with _controller_lock:
        if _controller is None:
            _controller = ThreadpoolController().select(user_api="openmp")
        return _controller


@contextmanager
def torch_threads_limited(n_threads: int = 1) -> Iterator[None]:
    """Run torch's CPU kernels on at most ``n_threads`` threads inside the ``with``
    block, in the calling thread only.

    Examples
    --------
    >>> before = torch.get_num_threads()
    >>> with torch_threads_limited(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    # torch sets a thread's count from its global setting the first time the thread
    # runs a parallel kernel; done now, so that it cannot undo the limit later.
    torch.get_num_threads()
    with _openmp().limit(limits=n_threads):
        yield
