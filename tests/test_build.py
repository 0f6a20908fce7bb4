"""How the extension was built, where it changes what the kernels do."""
import os
import struct
import sys

import pytest
import torch

from dmfx import _C


@pytest.mark.skipif(not (sys.platform.startswith("linux") and torch.backends.openmp.is_available()),
                    reason="torch has no OpenMP threads here, or setup.py does not add OpenMP")
def test_cpu_kernels_use_torch_threads():
    # at::parallel_for compiled without OpenMP silently runs every loop on one thread.
    assert _C.openmp_enabled()


def _elf_sections(path):
    """The file's bytes and its section headers, for a 64-bit little-endian ELF shared object
    (no readelf needed): (name, type, flags, addr, offset, size, link, info, align, entsize)."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, "not a 64-bit LE ELF file"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    return data, [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                  for i in range(shnum)], shstrndx


def _needed_libraries(path):
    """DT_NEEDED entries of the shared object."""
    data, sections, _ = _elf_sections(path)
    # .dynamic (type 6) names its string table in sh_link; entries are (tag, value), 1 = NEEDED
    dynamic = next(s for s in sections if s[1] == 6)
    strtab_offset = sections[dynamic[6]][4]
    needed = []
    for at in range(dynamic[4], dynamic[4] + dynamic[5], 16):
        tag, value = struct.unpack_from("<qQ", data, at)
        if tag == 0:
            break
        if tag == 1:
            start = strtab_offset + value
            needed.append(data[start:data.index(b"\0", start)].decode())
    return needed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF and libstdc++: Linux only")
def test_cpp_runtime_is_the_shared_one_torch_uses():
    """setup.py links libstdc++ dynamically even where the compiler defaults to a static copy: a
    second libstdc++ inside dmfx._C breaks number formatting in every error message."""
    assert "libstdc++.so.6" in _needed_libraries(_C.__file__)


def _section_names(path):
    data, sections, shstrndx = _elf_sections(path)
    names = sections[shstrndx][4]
    return {data[names + s[0]:data.index(b"\0", names + s[0])].decode() for s in sections}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF: Linux only")
@pytest.mark.skipif(os.environ.get("DMFX_DEBUG") == "1", reason="built with DMFX_DEBUG=1")
def test_extension_carries_no_debug_info_but_its_symbols():
    """setup.py overrides the -g of Python's CFLAGS (26 MB of debug info in a 0.9 MB library);
    the symbol table stays, so a crash's native stack still names dmfx's functions."""
    sections = _section_names(_C.__file__)
    assert ".text" in sections and ".symtab" in sections
    assert not {name for name in sections if name.startswith(".debug")}


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


def test_autograd_nodes_are_named_after_their_op():
    """A tensor's repr shows its grad_fn's name after the last '::': 'SparseRowsMatmulBackward>',
    not 'Function>'."""
    from dmfx import ops

    weight = torch.randn(3, 2, requires_grad=True)
    p, logits = torch.randn(2, 4, requires_grad=True), torch.randn(2, requires_grad=True)
    outputs = {
        "SparseRowsMatmulBackward": ops.sparse_rows_matmul(torch.tensor([0, 1]), torch.tensor([2]),
                                                           None, torch.tensor([0]), weight),
        "CosineNceLossBackward": ops.cosine_nce_loss(p, torch.randn(2, 4), torch.rand(2)),
        "HybridBceLossBackward": ops.hybrid_bce_loss(logits, torch.ones(2), torch.rand(2), 0.5),
    }
    for name, out in outputs.items():
        assert out.grad_fn.name().rsplit("::", 1)[-1] == name + ">"
        assert f"grad_fn=<{name}>>" in repr(out)
