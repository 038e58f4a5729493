"""Build of the compiled modules (the columnar path's gather, the WAL reader's hot path, and the redo
engine's page operations and heap/heap2 chains); everything else is in pyproject.toml. The
extensions are optional: without a C compiler the install still succeeds and
strata runs their pure-Python references (and says so)."""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension("strata.storage._gather", ["src/strata/storage/_gather.c"],
              extra_compile_args=["-O2"], optional=True),
    Extension("strata.wal._walbatch", ["src/strata/wal/_walbatch.c"],
              extra_compile_args=["-O2"], optional=True),
    Extension("strata.reconstruct.redo._pagec",
              [f"src/strata/reconstruct/redo/{f}.c" for f in ("_pagec", "_pagec_heap", "_pagec_btree",
                                                              "_pagec_vm", "_pagec_record",
                                                              "_pagec_window")],
              depends=["src/strata/reconstruct/redo/_pagec.h"],
              extra_compile_args=["-O2"], optional=True),
])
