"""Temporarily set environment variables (read by BLAS / CUDA in the processes started inside)."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

# the variables BLAS / OpenMP libraries read for their thread count
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
              "VECLIB_MAXIMUM_THREADS")


@contextlib.contextmanager
def temporary_environ(values: dict[str, str]) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the duration of the block, then restore the previous state."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
