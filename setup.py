"""Builds dmfx._C: the CPU kernels always, the CUDA kernels where they can be built.

CUDA is built when torch is a CUDA build and a CUDA toolkit is found, and either a GPU is
visible or FORCE_CUDA=1 (for building on a GPU-less machine). FORCE_CPU=1 skips CUDA.
DMFX_DEBUG=1 keeps the C++ debug info.

`make setup` builds the extension in place with `setup.py build_ext --inplace` (incremental:
objects are kept under build/temp, see setup.cfg) and then installs the package editable with
DMFX_SKIP_EXTENSION=1, because an editable install would otherwise rebuild everything from
scratch in a temporary directory.
"""
import glob
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def build_with_cuda() -> bool:
    if os.environ.get("FORCE_CPU", "0") == "1":
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        if os.environ.get("FORCE_CUDA", "0") == "1":
            raise RuntimeError(
                "FORCE_CUDA=1 needs a CUDA build of torch and a CUDA toolkit "
                f"(torch.version.cuda={torch.version.cuda}, CUDA_HOME={CUDA_HOME})"
            )
        return False
    return torch.cuda.is_available() or os.environ.get("FORCE_CUDA", "0") == "1"


def extension():
    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    # csrc/*.cpp: schemas, autograd and autocast; csrc/cpu: the CPU kernels and their
    # registration; csrc/cuda: the same for CUDA, in CUDA builds only.
    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    # No errno from math functions: lets GCC vectorise sqrt (nothing here reads errno).
    # -ffp-contract=off: a * b + c is never fused into one FMA behind the code's back. GCC fuses
    # wherever its pattern matcher happens to; built by GCC 13, sparse_rows_matmul gave a column
    # a different float32 result (1.9e-5 off) when another thread count moved it into another
    # column block, i.e. another copy of the same loop. Unfused, every copy rounds alike.
    # -Wno-psabi: an ABI note about the CPU kernels' SIMD helpers that does not apply (see
    # csrc/cpu/vec.h); per extension, as setuptools has no per-file flags.
    # -g0 overrides the -g of Python's own CFLAGS: debug info made dmfx._C 26 MB instead of
    # 0.9 MB and the CPU build 1.7x as long; the symbol table (function names in a crash's
    # native stack) stays. DMFX_DEBUG=1 keeps the debug info.
    debug = os.environ.get("DMFX_DEBUG", "0") == "1"
    cxx_flags = ["-O3", "-fno-math-errno", "-ffp-contract=off", "-Wno-psabi",
                 "-g" if debug else "-g0"]
    # The C++ runtime linked dynamically, the one torch uses, even where the compiler links it
    # statically by default (seen on one GPU machine's image): a second, static libstdc++ inside
    # dmfx._C formats numbers through locale facets that the process's libstdc++ set up, so an
    # error message naming a number crashed Python there (and came out empty with GCC 12).
    # "-l:libstdc++.so.6" names the shared file: that image's compiler searches its own
    # directory first, where a plain -lstdc++ finds only libstdc++.a.
    link_flags = ["-l:libstdc++.so.6"] if sys.platform.startswith("linux") else []
    # at::parallel_for is a header template: compiled without OpenMP it runs every loop on the
    # calling thread. Linked with -fopenmp, the extension shares the OpenMP runtime torch has
    # already loaded (same soname), so torch.set_num_threads governs its loops too.
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if build_with_cuda():
        return CUDAExtension(
            "dmfx._C",
            sources + rel("csrc/cuda/*.cpp") + rel("csrc/cuda/*.cu"),
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-lineinfo"]},
            extra_link_args=link_flags,
        )
    return CppExtension("dmfx._C", sources, extra_compile_args={"cxx": cxx_flags},
                        extra_link_args=link_flags)


setup(
    ext_modules=[] if os.environ.get("DMFX_SKIP_EXTENSION", "0") == "1" else [extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
