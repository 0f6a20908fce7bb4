"""dmfx: sparse-optimized C++/CUDA kernels and a trainer for Deep Matrix Factorization in PyTorch."""
from . import ops, reference
from .ops import (cosine_nce_loss, cuda_enabled, hybrid_bce_loss, row_sparse_adam_,
                  sample_negatives, sparse_rows_matmul)

__version__ = "0.1.0"

__all__ = [
    "ops",
    "reference",
    "sparse_rows_matmul",
    "cosine_nce_loss",
    "hybrid_bce_loss",
    "sample_negatives",
    "row_sparse_adam_",
    "cuda_enabled",
]
