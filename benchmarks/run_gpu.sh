#!/usr/bin/env bash
# The GPU benchmark run: one command, from the repository root of a CUDA machine where the
# dmfx extension is already built with its CUDA kernels. Builds nothing. `bash tools/check_gpu.sh
# bench` runs it under a time limit (after `bash tools/check_gpu.sh build`) and adds one line per
# table (dmfx's median and each peer's ratio to it) to that script's summary.
#
#   bash benchmarks/run_gpu.sh                    # the SHAPES of dmfx/bench/inputs.py (~3-5 min on an H100)
#   DMFX_BENCH_BIG=1 bash benchmarks/run_gpu.sh   # + 2M users x 1M items x 50M ratings (+~2 min)
#
# One pytest per suite (benchmarks/test_*.py), each writing its own JSON under $OUT/suites/, so a
# run killed at a time limit keeps every suite it finished. After each suite, bench.json (all
# finished suites merged, pytest-benchmark's layout) and RESULTS.md (the markdown report) are
# rewritten under $OUT (default ./bench-out), with pytest.log (every suite's output, one file per
# suite under $OUT/logs/) and nvidia-smi.csv. After each suite a line in pytest's closing format
# ("===== 40 passed, 3 skipped in 95.2s (3 suites) =====") totals the suites finished so far.
# PYTHON overrides the interpreter.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./bench-out}"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
mkdir -p "$OUT/suites" "$OUT/logs"
# Results of an earlier run would be merged into this one's, or reported as this one's.
rm -f "$OUT"/suites/*.json "$OUT"/logs/*.log "$OUT/bench.json" "$OUT/RESULTS.md" "$OUT/pytest.log"

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

# The headline tables first, so that a run cut short loses the least of them; then any other
# suite. test_readers.py is left out: the readers run on the CPU, every case skips on CUDA.
FIRST=(sparse_rows_matmul train_step cosine_nce_loss hybrid_bce_loss sample_negatives recommend)
SUITES=()
for name in "${FIRST[@]}"; do
    [ -f "benchmarks/test_$name.py" ] && SUITES+=("benchmarks/test_$name.py")
done
for suite in benchmarks/test_*.py; do
    case " ${SUITES[*]} " in *" $suite "*) continue ;; esac
    [ "$suite" = benchmarks/test_readers.py ] && continue
    SUITES+=("$suite")
done

DONE=()  # the suites' JSONs, in run order
report() {  # bench.json and RESULTS.md from the suites finished so far, each written whole
    [ ${#DONE[@]} -gt 0 ] || return 0
    "$PYTHON" benchmarks/report.py "${DONE[@]}" --merged-json "$OUT/bench.json" \
        > "$OUT/.RESULTS.md.tmp" && mv "$OUT/.RESULTS.md.tmp" "$OUT/RESULTS.md"
}

tally() {  # the finished suites' pytest closing lines, summed, in pytest's format
    "$PYTHON" - "$OUT"/logs/*.log <<'PY'
import re
import sys

counts, seconds, suites = {}, 0.0, 0
for path in sys.argv[1:]:
    with open(path, errors="replace") as f:
        lines = [l for l in f if re.match(r"^=*\s*\d+ (passed|failed|skipped|deselected|errors?|"
                                          r"xfailed|xpassed|warnings?)", l)]
    if not lines:
        continue
    suites += 1
    for n, what in re.findall(r"(\d+) ([a-z]+)", lines[-1]):
        what = {"error": "errors", "warning": "warnings"}.get(what, what)
        counts[what] = counts.get(what, 0) + int(n)
    took = re.search(r" in ([0-9.]+)s", lines[-1])
    seconds += float(took.group(1)) if took else 0.0
order = ["failed", "passed", "skipped", "deselected", "xfailed", "xpassed", "warnings", "errors"]
parts = [f"{counts[k]} {k}" for k in order if counts.get(k)] or ["no tests ran"]
print(f"===== {', '.join(parts)} in {seconds:.1f}s ({suites} suites) =====")
PY
}

BIG_FLAG="${DMFX_BENCH_BIG:+--big}"
status=0
for suite in "${SUITES[@]}"; do
    name=$(basename "$suite" .py)
    # shellcheck disable=SC2086  # BIG_FLAG is empty or one word
    "$PYTHON" -m pytest "$suite" -q -p no:cacheprovider --benchmark-only --device cuda $BIG_FLAG \
        --benchmark-json="$OUT/suites/$name.json" --benchmark-columns=median,iqr,rounds \
        --benchmark-group-by=group --benchmark-sort=name 2>&1 | tee "$OUT/logs/$name.log"
    rc=${PIPESTATUS[0]}
    cat "$OUT/logs/$name.log" >> "$OUT/pytest.log"
    # 5: pytest collected nothing (every case of the suite is for another device or --big)
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=$rc; fi
    [ -s "$OUT/suites/$name.json" ] && DONE+=("$OUT/suites/$name.json")
    report
    tally | tee -a "$OUT/pytest.log"
done

# Every finished suite is in the report, so report even after a failure.
[ -s "$OUT/RESULTS.md" ] && cat "$OUT/RESULTS.md"
exit "$status"
