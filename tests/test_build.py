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
