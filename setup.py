"""Build script for the optional C extension; everything else is declared in pyproject.toml."""

import sys

from setuptools import Extension, setup

# diffode._combine fuses the integrators' linear combinations into one pass over memory
# (diffode/kernels.py). It is optional: where it cannot be built (no C compiler), the install
# goes on and diffode uses the same arithmetic in eager PyTorch.
# No multiply-add contraction: every element is then rounded alike, in the vector loop and in its
# scalar remainder, so a sample's result does not depend on where it sits in the batch.
flags = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]
setup(ext_modules=[Extension("diffode._combine", ["diffode/_combine.c"], extra_compile_args=flags, optional=True)])
