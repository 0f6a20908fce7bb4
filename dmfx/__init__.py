"""dmfx: sparse-optimized Deep Matrix Factorization for PyTorch."""
