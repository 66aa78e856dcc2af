"""GRU4Rec's evaluation walk in the fused C kernels, one state per distinct prefix.

Ranking the next items of a set of sessions needs the network's state after each
prefix of each session (every event but a session's last). The session-parallel walk
of :meth:`GRU4RecRecommender._iter_scores` feeds every event; but equal prefixes give
equal states, and on rsc15-100k's test set 30% of the prefixes repeat an earlier one
(most are a session's first item). :class:`FusedGRUWalk` builds the tree of distinct
prefixes (``sr_prefix_tree``) and computes its states level by level, the prefixes of
one length per GRU step (``sr_gru_tree_walk_f32``), with the GRU kernel the Python walk
calls: each state is the Python walk's, bit for bit (a test checks it), computed once.
On two cores the rsc15 walk takes 13-14 ms this way, 32-36 ms in Python.
"""

from __future__ import annotations

import numpy as np
import torch

from .._native import kernels as _kernels
from ._gru4rec_network import GRU4RecNetwork

__all__ = ["FusedGRUWalk", "session_runs"]

# Most nodes of a level one GRU step takes: wider levels are cut into steps of this many,
# which bounds the work space (8 x this x the layers' units floats: 6.5 MB for 100 units)
# and keeps a step's rows many enough for the products.
MAX_STEP_NODES = 2048


def session_runs(offsets: np.ndarray, max_prefixes: int):
    """``(first, stop)`` runs of consecutive sessions (session ``s`` holds events
    ``offsets[s]:offsets[s + 1]``) with at most ``max_prefixes`` prefixes each (every
    event but a session's last), or one session if it has more."""
    ends = np.cumsum(np.maximum(np.diff(offsets) - 1, 0))  # prefixes of sessions 0 .. s
    first, n_sessions = 0, len(offsets) - 1
    while first < n_sessions:
        before = ends[first - 1] if first else 0
        stop = int(np.searchsorted(ends, before + max_prefixes, side="right"))
        stop = min(max(stop, first + 1), n_sessions)
        yield first, stop
        first = stop


class FusedGRUWalk:
    """The top layer's states after the prefixes of sessions, by the C kernels.

    Parameters
    ----------
    network : GRU4RecNetwork
    gate_table : Tensor (n_items, 3 H_0)
        The first layer's gate inputs per item (``network.item_gate_table``).

    ``states(items, offsets, first, stop)`` walks sessions ``first:stop``.
    """

    def __init__(self, network: GRU4RecNetwork, gate_table: torch.Tensor):
        self._sizes = torch.tensor(network.layers, dtype=torch.int64)
        self._layout = network.layer_layout()
        self._reset_after = torch.tensor(network.layer_resets_after, dtype=torch.int64)
        self._dense = network.dense.detach()
        self._gate_table = gate_table.detach()

    def states(self, items: torch.Tensor, offsets: torch.Tensor, first: int, stop: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(node_of, states)`` of sessions ``first:stop`` (session ``s`` holds
        ``items[offsets[s]:offsets[s + 1]]``; int64, contiguous): ``states`` holds the top
        layer's state after each distinct prefix (n_nodes x H), ``node_of`` the row of
        each prefix, in event order."""
        node_of, parent, item, level_offsets = _kernels.prefix_tree(items, offsets, first,
                                                                    stop)
        widest = 1
        if len(parent):
            widest = min(int((level_offsets[1:] - level_offsets[:-1]).max()),
                         MAX_STEP_NODES)
        states = _kernels.gru_tree_walk(self._sizes, self._layout, self._reset_after,
                                        self._dense, self._gate_table, level_offsets,
                                        parent, item, widest)
        return node_of, states[-1]
