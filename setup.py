"""Builds the optional C library of fused CPU kernels (sessionrec/_native/csrc/).

Everything else about the package is in pyproject.toml. The extension is optional: where
it cannot be compiled (no C compiler), installation goes on and sessionrec runs the
PyTorch code the kernels replace. On Linux it is built with OpenMP, to share PyTorch's
thread pool (see the head of csrc/fused.c); where the compiler has no OpenMP it is built
without, and the kernels run on one thread.
"""

import glob
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

if sys.platform == "win32":
    flags = ["/O2", "/fp:precise"]
else:
    flags = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-fvisibility=hidden",
             "-Wno-psabi"]
OPENMP = ["-fopenmp"] if sys.platform.startswith("linux") else []


class BuildWithFallback(build_ext):
    """Builds with OpenMP where the platform uses it, and again without if that fails."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:  # noqa: BLE001 - distutils' compile and link errors
            if not OPENMP or OPENMP[0] not in ext.extra_compile_args:
                raise
            print("sessionrec: building the fused kernels without OpenMP")
            ext.extra_compile_args = [f for f in ext.extra_compile_args if f not in OPENMP]
            ext.extra_link_args = [f for f in ext.extra_link_args if f not in OPENMP]
            super().build_extension(ext)


setup(ext_modules=[Extension("sessionrec._native._fused",
                             # One translation unit that includes the other parts.
                             sources=["sessionrec/_native/csrc/fused.c"],
                             depends=sorted(glob.glob("sessionrec/_native/csrc/*")),
                             extra_compile_args=flags + OPENMP, extra_link_args=OPENMP,
                             optional=True)],
      cmdclass={"build_ext": BuildWithFallback})
