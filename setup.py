"""Builds the optional C library of fused CPU kernels (sessionrec/nn/_fused.c).

Everything else about the package is in pyproject.toml. The extension is optional: where
it cannot be compiled (no C compiler), installation goes on and sessionrec runs the
PyTorch code the kernels replace.
"""

import sys

from setuptools import Extension, setup

if sys.platform == "win32":
    flags = ["/O2", "/fp:precise"]
else:
    flags = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden",
             "-Wno-psabi"]

setup(ext_modules=[Extension("sessionrec.nn._fused", sources=["sessionrec/nn/_fused.c"],
                             extra_compile_args=flags, optional=True)])
