"""Torch building blocks shared by the recurrent models (GRU4Rec, HRNN, p-RNN).

The training step has no back-propagation through time (hidden states are detached every
step), so its backward pass is short and written out by hand: it avoids the autograd
engine's per-node overhead, which dominates at the small batch sizes session models use,
and it yields the sparse row gradients of the item tables directly. Every hand-written
gradient is tested against autograd.
"""

import importlib
import sys

# Models pickled before the network modules were named for their models (GRU4Rec's was
# _network, HRNN's _hierarchical, p-RNN's _parallel) name those modules; pickle imports
# them by name, so each old name is registered, on first import of this package, as the
# module that holds the class now.
_RENAMED = {"_network": "_gru4rec_network", "_hierarchical": "_hrnn_network",
            "_parallel": "_prnn_network"}
for _old, _new in _RENAMED.items():
    sys.modules.setdefault(f"{__name__}.{_old}", importlib.import_module(f".{_new}", __name__))
del _old, _new
