"""Type-checks the CUDA op glue without a GPU: csrc/cuda/*.cpp (the CUDA kernels' registration
with torch) and csrc/*.cpp, all with WITH_CUDA.

A CPU-only torch build never compiles these, so this compiles each file with
`g++ -fsyntax-only -DWITH_CUDA` against torch's headers and the CUDA toolkit's headers.
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

from torch.utils.cpp_extension import include_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cuda_include() -> str:
    nvcc = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates.append(os.path.dirname(os.path.dirname(nvcc)) if nvcc else None)
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "include", "cuda_runtime_api.h")):
            return os.path.join(home, "include")
    sys.exit("check_cuda_glue: no CUDA toolkit headers found; set CUDA_HOME")


def check(path: str, flags: list) -> tuple:
    cmd = [os.environ.get("CXX", "g++"), "-std=c++17", "-fsyntax-only", "-DWITH_CUDA", *flags, path]
    result = subprocess.run(cmd, capture_output=True, text=True)
    return path, result.returncode, result.stderr


def generated_headers(root: str) -> str:
    """The one header a CUDA build of torch generates at configure time and a CPU wheel lacks."""
    path = os.path.join(root, "c10", "cuda", "impl", "cuda_cmake_macros.h")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return root


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="dmfx-cuda-glue-") as tmp:
        return check_all(generated_headers(tmp))


def check_all(generated: str) -> int:
    flags = [f"-I{p}" for p in include_paths()] + [
        f"-I{cuda_include()}",
        f"-I{generated}",
        f"-I{sysconfig.get_paths()['include']}",
        f"-I{os.path.join(ROOT, 'csrc')}",
    ]
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) +
                     glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(lambda s: check(s, flags), sources))
    failed = [r for r in results if r[1] != 0]
    for path, _, err in failed:
        print(f"{os.path.relpath(path, ROOT)}:\n{err}", file=sys.stderr)
    print(f"CUDA glue: {len(results) - len(failed)} of {len(results)} files compile with WITH_CUDA")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
