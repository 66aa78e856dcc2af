"""Torch building blocks shared by the recurrent models (GRU4Rec, HRNN, p-RNN).

The training step has no back-propagation through time (hidden states are detached every
step), so its backward pass is short and written out by hand: it avoids the autograd
engine's per-node overhead, which dominates at the small batch sizes session models use,
and it yields the sparse row gradients of the item tables directly. Every hand-written
gradient is tested against autograd.
"""
