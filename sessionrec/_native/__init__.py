"""The optional C library of fused CPU kernels and its Python bindings.

Kept outside ``sessionrec.nn`` because both the networks and the evaluation engine use
it: :mod:`.kernels` loads the library on first use (never at import) and says whether it
is in use (:func:`.kernels.available`).
"""
