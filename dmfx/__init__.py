"""dmfx: sparse-optimized C++/CUDA kernels and a trainer for Deep Matrix Factorization in PyTorch.

The ops (``dmfx.ops`` and the names below) need the compiled extension ``dmfx._C`` and are
imported on first use, so the pure-Python parts (``dmfx.data``, ``dmfx.reference``) work without
a build. Without the extension, using an op raises ImportError saying how to build it.
"""
import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING

from ._version import __version__

_SUBMODULES = ("ops", "reference", "nn")
_OPS = ("sparse_rows_matmul", "cosine_nce_loss", "hybrid_bce_loss", "sample_negatives",
        "row_sparse_adam_", "cuda_enabled")

__all__ = [
    "ops",
    "reference",
    "nn",
    "sparse_rows_matmul",
    "cosine_nce_loss",
    "hybrid_bce_loss",
    "sample_negatives",
    "row_sparse_adam_",
    "cuda_enabled",
]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")  # also binds it in this module
    if name in _OPS:
        value = getattr(_importlib.import_module(f"{__name__}.ops"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


if _TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily above
    from . import nn, ops, reference
    from .ops import (cosine_nce_loss, cuda_enabled, hybrid_bce_loss, row_sparse_adam_,
                      sample_negatives, sparse_rows_matmul)
