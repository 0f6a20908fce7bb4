#!/usr/bin/env bash
# Everything a CUDA machine must confirm about dmfx, in one command from the repository root:
# build with the CUDA kernels, run the test suite (its CUDA variants run only here), run the CUDA
# op tests under compute-sanitizer memcheck and racecheck, then the GPU benchmarks.
#
#   OUT=/some/dir bash tools/check_gpu.sh            # DESIGN.md shapes
#   DMFX_BENCH_BIG=1 OUT=/some/dir bash tools/check_gpu.sh   # + 2M x 1M x 50M
#
# Writes under $OUT (default ./gpu-out): build.log, pytest.log, memcheck.log, racecheck.log and the
# benchmark outputs of benchmarks/run_gpu.sh; prints a summary line per step. PYTHON overrides the
# interpreter (default python3, which must already have a CUDA build of torch).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-out}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHON OUT

"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'check_gpu.sh: torch sees no CUDA device')" || exit 1

step() {  # step NAME LOG COMMAND...: run, keep the log, report
    local name=$1 log=$2
    shift 2
    local start=$SECONDS
    "$@" > "$OUT/$log" 2>&1
    local status=$?
    echo "$name: exit $status in $((SECONDS - start)) s (log: $OUT/$log)"
    return $status
}

step build build.log "$PYTHON" setup.py build_ext --inplace || exit 1
"$PYTHON" -c "import dmfx, sys; sys.exit(0 if dmfx.cuda_enabled() else 'build has no CUDA kernels')" || exit 1
step tests pytest.log "$PYTHON" -m pytest tests -q -rs
OPS_TESTS="tests/test_sparse_rows_matmul.py tests/test_cosine_nce_loss.py tests/test_sample_negatives.py tests/test_row_sparse_adam.py"
# shellcheck disable=SC2086  # OPS_TESTS is a list of paths
step memcheck memcheck.log compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$PYTHON" -m pytest $OPS_TESTS -q -k cuda -p no:cacheprovider
# shellcheck disable=SC2086
step racecheck racecheck.log compute-sanitizer --tool racecheck --error-exitcode 9 \
    "$PYTHON" -m pytest $OPS_TESTS -q -k cuda -p no:cacheprovider
step benchmarks benchmarks.log bash benchmarks/run_gpu.sh
