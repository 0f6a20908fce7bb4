#!/usr/bin/env bash
# The GPU benchmark run: one command, from the repository root of a CUDA machine where the
# dmfx extension is already built with its CUDA kernels. Builds nothing. `bash tools/check_gpu.sh
# bench` runs it under a time limit (after `bash tools/check_gpu.sh build`) and adds one line per
# table (dmfx's median and each peer's ratio to it) to that script's summary.
#
#   bash benchmarks/run_gpu.sh                    # the SHAPES of dmfx/bench/inputs.py (~3-5 min on an H100)
#   DMFX_BENCH_BIG=1 bash benchmarks/run_gpu.sh   # + 2M users x 1M items x 50M ratings (+~2 min)
#
# Writes under $OUT (default ./bench-out): bench.json (pytest-benchmark), RESULTS.md (the
# markdown report), pytest.log and nvidia-smi.csv. PYTHON overrides the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench-out}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT"

# Without a usable GPU every benchmark would be skipped and the report empty: stop here instead.
"$PYTHON" - <<'PY' || exit 1
import sys
import torch
import dmfx
if not torch.cuda.is_available():
    sys.exit(f"run_gpu.sh: torch {torch.__version__} sees no CUDA device")
if not dmfx.cuda_enabled():
    sys.exit("run_gpu.sh: this dmfx build has no CUDA kernels; build it on this machine first")
print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
    > "$OUT/nvidia-smi.csv" 2>&1 || true

BIG_FLAG="${DMFX_BENCH_BIG:+--big}"
# shellcheck disable=SC2086  # BIG_FLAG is empty or one word
"$PYTHON" -m pytest benchmarks -q -p no:cacheprovider --benchmark-only --device cuda $BIG_FLAG \
    --benchmark-json="$OUT/bench.json" --benchmark-columns=median,iqr,rounds \
    --benchmark-group-by=group --benchmark-sort=name 2>&1 | tee "$OUT/pytest.log"
status=${PIPESTATUS[0]}

# The JSON holds every benchmark that finished, so report even after a failure.
if [ -s "$OUT/bench.json" ]; then
    "$PYTHON" benchmarks/report.py "$OUT/bench.json" | tee "$OUT/RESULTS.md"
fi
exit "$status"
