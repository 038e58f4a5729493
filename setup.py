"""Build of the one compiled module (the WAL reader's hot path); everything else
is in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and strata reads WAL in pure Python (and says so)."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("strata.wal._walbatch", ["src/strata/wal/_walbatch.c"],
                             extra_compile_args=["-O2"], optional=True)])
