"""How the extension was built, where it changes what the kernels do."""
import sys

import pytest
import torch

from dmfx import _C


@pytest.mark.skipif(not (sys.platform.startswith("linux") and torch.backends.openmp.is_available()),
                    reason="torch has no OpenMP threads here, or setup.py does not add OpenMP")
def test_cpu_kernels_use_torch_threads():
    # at::parallel_for compiled without OpenMP silently runs every loop on one thread.
    assert _C.openmp_enabled()


OPS = ["sparse_rows_matmul", "sparse_rows_matmul_backward_weight",
       "sparse_rows_matmul_backward_values", "cosine_nce_loss", "cosine_nce_loss_backward",
       "hybrid_bce_loss", "hybrid_bce_loss_backward", "sample_negatives", "row_sparse_adam_"]


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_one_kernel_per_device(op):
    """CPU always; CUDA in every build (the real kernels, or ones that say they are missing)."""
    import dmfx.ops  # noqa: F401  (loads the extension)

    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"dmfx::{op}", key), (op, key)


@pytest.mark.skipif(_C.cuda_enabled(), reason="this build has the CUDA kernels")
def test_build_without_cuda_says_so_for_cuda_tensors():
    """Run the CUDA kernel of each op directly (redispatch to the CUDA key): a build without the
    CUDA kernels must name dmfx and what is missing, not fall to torch's generic
    "could not run ... with arguments from the 'CUDA' backend"."""
    import dmfx  # noqa: F401

    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    indptr, indices = torch.tensor([0, 1]), torch.tensor([0])
    weight = torch.ones(1, 2)
    with pytest.raises(NotImplementedError,
                       match="dmfx.sparse_rows_matmul: dmfx was built without CUDA kernels"):
        torch.ops.dmfx.sparse_rows_matmul.default.redispatch(cuda, indptr, indices, None,
                                                             indptr[:1], weight, True)
    with pytest.raises(NotImplementedError,
                       match="dmfx.sample_negatives: dmfx was built without CUDA kernels"):
        torch.ops.dmfx.sample_negatives.default.redispatch(cuda, indptr, indices, indptr[:1], 3,
                                                           1, 0, True)
