#!/usr/bin/env bash
# What a CUDA machine must confirm about dmfx, in steps that each fit a 10-minute command.
# From the repository root, with python3 holding a CUDA build of torch (plus pytest and
# pytest-benchmark), nvcc and compute-sanitizer:
#
#   bash tools/check_gpu.sh build tests   # CUDA build (33 s on an H200 machine with
#                                         # TORCH_CUDA_ARCH_LIST=9.0), the test suite (~2 min)
#   bash tools/check_gpu.sh sanitize      # memcheck, initcheck, synccheck, racecheck (at most 6 min)
#   bash tools/check_gpu.sh bench         # benchmarks/run_gpu.sh (~2-5 min; DMFX_BENCH_BIG=1: +~2 min)
#   bash tools/check_gpu.sh dmfx-bench    # `dmfx bench --device cuda` on the benchmark shapes (~4 min)
#   bash tools/check_gpu.sh scale         # the 2M x 1M x 50M training run, sharded NCCL at world
#                                         # size 1 (~3 min)
#   bash tools/check_gpu.sh summary       # the one-screen summary again (every call ends with it)
#   bash tools/check_gpu.sh               # all steps in one go (~15-20 min)
#
# The build lives only on the machine that made it (dmfx/_C*.so is ignored by git): a call that
# may land on a fresh machine starts with the build step, e.g. `build dmfx-bench`.
#
# Steps: build, tests, memcheck, initcheck, synccheck, racecheck (sanitize = those four), bench,
# dmfx-bench, scale, summary; they run in that order whatever the order given. `tests -- PYTEST ARGS` replaces the
# tests step's selection (default: tests; with pytest-xdist installed, TEST_WORKERS workers,
# default 8, of two threads each). The build step also checks that an error thrown in dmfx._C's
# C++ reaches Python as an exception and names the compiler and C++ runtime used; where it
# crashes Python instead, it saves the crash's native stack (crash-backtrace.log, by cuda-gdb or
# gdb) and rebuilds once with /usr/bin/g++. Each step's result and log persist in
# build/gpu-check/ (ignored by git, so kept between calls on one machine; the build step clears
# them); with $OUT set, each call also writes its logs and summary.txt there as it goes. A failing
# step never stops the later ones or the summary; the exit status is 1 if a step of this call
# failed. Without a GPU the build is CPU-only, the tests run with their CUDA variants skipped,
# and the sanitizers and benchmarks are skipped: the summary says "no GPU".
#
# Environment: PYTHON (default python3); <STEP>_TIMEOUT in seconds, the most a step may run
# (BUILD_TIMEOUT=180, TESTS_TIMEOUT=240, MEMCHECK_TIMEOUT=120, INITCHECK_TIMEOUT=120,
# SYNCCHECK_TIMEOUT=60, RACECHECK_TIMEOUT=60, BENCH_TIMEOUT=540, DMFX_BENCH_TIMEOUT=400,
# SCALE_TIMEOUT=540; an H100 took 35 s, 99 s and 16 s for build, tests and memcheck: each call
# above, and `build tests memcheck racecheck`, stays under 10 minutes; a step that ran out shows TIMEOUT and can be rerun alone with a
# larger one, e.g. MEMCHECK_TIMEOUT=540 bash tools/check_gpu.sh memcheck); SANITIZER (path to
# compute-sanitizer);
# DMFX_BENCH_BIG=1 (benchmarks: add the 2M x 1M x 50M shapes); FORCE_CUDA / TORCH_CUDA_ARCH_LIST /
# MAX_JOBS reach setup.py.
set -uo pipefail  # no -e: a failed step is recorded and the next one runs
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1  # a step killed at its timeout still leaves its output in the log

PYTHON=${PYTHON:-python3}
STATE=build/gpu-check
ALL_STEPS=(build tests memcheck initcheck synccheck racecheck bench dmfx-bench scale)
OPS_TESTS=(tests/test_sparse_rows_matmul.py tests/test_cosine_nce_loss.py
           tests/test_hybrid_bce_loss.py tests/test_sample_negatives.py
           tests/test_row_sparse_adam.py)
# The CUDA variants of the op tests, without torch.compile / torch.export (Triton and Inductor
# under a sanitizer would take the whole budget and check none of dmfx's kernels).
CUDA_TESTS="cuda and not compiled and not export"
# Lighter: gradcheck and opcheck launch thousands of small kernels.
CUDA_TESTS_LIGHT="$CUDA_TESTS and not gradcheck and not opcheck"
# Only dmfx's own kernels are instrumented (a substring of their mangled and demangled names):
# torch's kernels are not what is being checked, and instrumenting them costs most of the time.
DMFX_KERNELS=(--kernel-name kns=dmfx)

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

selected=" " pytest_args=(tests)
while (($#)); do
    case $1 in
        --) shift; (($#)) && pytest_args=("$@"); break ;;
        all) selected+="${ALL_STEPS[*]} " ;;
        sanitize) selected+="memcheck initcheck synccheck racecheck " ;;
        build | tests | memcheck | initcheck | synccheck | racecheck | bench | dmfx-bench | scale | \
            summary)
            selected+="$1 " ;;
        -h | --help) usage; exit 0 ;;
        *) echo "check_gpu.sh: unknown step '$1'" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
[[ $selected == " " ]] && selected=" ${ALL_STEPS[*]} "

mkdir -p "$STATE"
OUT_DIR=""
if [[ -n ${OUT:-} ]]; then
    mkdir -p "$OUT"
    [[ $(cd "$OUT" && pwd -P) != $(cd "$STATE" && pwd -P) ]] && OUT_DIR=$OUT
fi
out_files=()  # what this call wrote under $OUT

# ----------------------------------------------------------------------------------- probes

# gpu=yes|no, gpu_name, torch, torch_cuda (one line each)
probe=$("$PYTHON" - 2>&1 <<'PY'
import torch
gpu = torch.cuda.is_available()
print("gpu=" + ("yes" if gpu else "no"))
print("gpu_name=" + (torch.cuda.get_device_name() if gpu else ""))
print("torch=" + torch.__version__)
print("torch_cuda=" + (torch.version.cuda or "none (a CPU build of torch)"))
PY
) || probe="gpu=no
torch=not importable by $PYTHON: $(tail -n 1 <<<"$probe")"
probe_value() { sed -n "s/^$1=//p" <<<"$probe" | head -n 1; }
GPU=$(probe_value gpu)

EXT=""
check_extension() {  # sets EXT: cuda | cpu | missing, what the in-place build of dmfx._C holds
    [[ -n $EXT ]] && return
    EXT=$("$PYTHON" -c "import dmfx.ops as o; print('cuda' if o.cuda_enabled() else 'cpu')" \
        2>/dev/null) || EXT=missing
}

NO_SANITIZER="compute-sanitizer not found (looked at \$SANITIZER, PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)"
find_sanitizer() {
    local candidate
    for candidate in "${SANITIZER:-}" "$(command -v compute-sanitizer 2>/dev/null)" \
        ${CUDA_HOME:+"$CUDA_HOME/bin/compute-sanitizer"} /usr/local/cuda/bin/compute-sanitizer; do
        if [[ -n $candidate && -x $candidate ]]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# ---------------------------------------------------------------------------- bookkeeping

record() {  # STEP RESULT SECONDS NOTE: RESULT is PASS, FAIL, TIMEOUT or SKIP
    printf '%s\t%s\t%s\n' "$2" "$3" "$4" > "$STATE/$1.status"
    printf '== %-10s %-7s %4s s  %s\n' "$1" "$2" "$3" "$4"
}

run_logged() {  # STEP TIMEOUT COMMAND...: log to $STATE/STEP.log (and $OUT); sets ELAPSED, returns rc
    local step=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $step: running (at most ${limit} s)"
    if [[ -n $OUT_DIR ]]; then
        # Written into $OUT as it grows: a call killed at the device's limit still returns it.
        out_files+=("$step.log")
        { echo "\$ $(printf '%q ' "$@")"; timeout --kill-after=15 "$limit" "$@"; } 2>&1 |
            tee "$OUT_DIR/$step.log" > "$STATE/$step.log"
        rc=${PIPESTATUS[0]}
    else
        { echo "\$ $(printf '%q ' "$@")"; timeout --kill-after=15 "$limit" "$@"; } \
            > "$STATE/$step.log" 2>&1
        rc=$?
    fi
    ELAPSED=$((SECONDS - start))
    return "$rc"
}

result_of() {  # RC: PASS, TIMEOUT or FAIL
    case $1 in 0) echo PASS ;; 124 | 137) echo TIMEOUT ;; *) echo FAIL ;; esac
}

pytest_tally() {  # LOG: pytest's closing line ("850 passed, 7 skipped in 80.1s"), else the last
    local line
    line=$(grep -E '^=*( |)[0-9]+ (passed|failed|skipped|deselected|errors?|xfailed|xpassed)' "$1" |
        tail -n 1 | sed -E 's/^=+ //; s/ =+$//')
    [[ -n $line ]] ||
        line="no pytest tally; last line: $(grep -v '^[[:space:]]*$' "$1" | tail -n 1 | cut -c1-120)"
    echo "$line"
}

# ------------------------------------------------------------------------------------ steps

gpu_step_ready() {  # STEP: record why a CUDA-only step cannot run, or return 0
    if [[ $GPU != yes ]]; then
        record "$1" SKIP 0 "no GPU"
        return 1
    fi
    check_extension
    if [[ $EXT != cuda ]]; then
        record "$1" FAIL 0 "dmfx._C has no CUDA kernels ($EXT): run the build step first"
        return 1
    fi
}

toolchain() {  # the C++ compiler a build uses and the C++ runtime dmfx._C links, one line
    local cxx
    cxx=$(command -v "${CXX:-c++}" 2>/dev/null) || cxx="${CXX:-c++} (not found)"
    echo "compiler $cxx ($("${CXX:-c++}" --version 2>/dev/null | head -n 1)); dmfx._C links" \
        "$(ldd dmfx/_C*.so 2>/dev/null | grep -oE 'lib(stdc\+\+|gcc_s|gomp)[^ ]*' | sort -u |
            tr '\n' ' ')"
}

# An argument error that dmfx._C's C++ throws (mu is checked there): exit 0 when it arrives as
# ValueError.
THROW_CHECK='
import torch
import dmfx.ops as ops
p = torch.ones(2, 3)
try:
    ops.cosine_nce_loss(p, p, torch.ones(2), mu=0.0)
except ValueError:
    raise SystemExit(0)
raise SystemExit(1)
'

errors_reach_python() {
    "$PYTHON" -c "$THROW_CHECK" > /dev/null 2>&1
}

crash_backtrace() {  # the native stack of that crash, by cuda-gdb (it debugs host code too) or gdb
    local gdb
    gdb=$(command -v cuda-gdb 2>/dev/null) || gdb=${CUDA_HOME:-/usr/local/cuda}/bin/cuda-gdb
    [[ -x $gdb ]] || gdb=$(command -v gdb 2>/dev/null) || return 0
    run_logged crash-backtrace 120 "$gdb" -batch -ex run -ex bt -ex "info sharedlibrary" \
        --args "$PYTHON" -c "$THROW_CHECK"
}

build_once() {  # LOG-STEP [VAR=VALUE...]: setup.py build_ext in place; sets rc, ELAPSED, EXT
    local step=$1 cmd
    shift
    cmd=(env "$@" "$PYTHON" setup.py build_ext --inplace)
    # With a GPU the CUDA kernels are required: FORCE_CUDA makes a missing toolkit an error.
    [[ $GPU == yes ]] && cmd=(env FORCE_CUDA=1 "${cmd[@]}")
    run_logged "$step" "${BUILD_TIMEOUT:-180}" "${cmd[@]}"
    rc=$?
    EXT=""
    check_extension
}

step_build() {
    rm -rf "$STATE"/*.status "$STATE"/*.log "$STATE/bench"  # results of an older build
    local rc note errors="" alt elapsed
    build_once build
    elapsed=$ELAPSED
    # Seen on one GPU machine's image: its default `c++` linked libstdc++ statically, and every
    # error message of dmfx._C that named a number crashed Python (setup.py now links the shared
    # libstdc++). Should an error still not arrive as an exception, the system g++ is tried.
    if [[ $EXT != missing ]] && ! errors_reach_python; then
        errors="a C++ error crashed Python with $(toolchain); native stack in crash-backtrace.log"
        crash_backtrace
        alt=/usr/bin/g++
        if [[ -x $alt && $(readlink -f "$alt") != $(readlink -f "$(command -v "${CXX:-c++}")") ]]; then
            rm -rf build/temp  # the other compiler's objects
            # CC too: torch hands it to nvcc as -ccbin, the host compiler of the .cu files.
            build_once build-retry CC=/usr/bin/gcc CXX=$alt
            elapsed=$((elapsed + ELAPSED))
            if [[ $EXT != missing ]] && errors_reach_python; then
                errors+="; rebuilt with CXX=$alt: errors raise ($(CXX=$alt toolchain))"
            else
                errors+="; rebuilt with CXX=$alt: still crashes"
            fi
        fi
    fi
    case $EXT in
        cuda) note="dmfx._C built with the CUDA kernels" ;;
        cpu) note="dmfx._C built without CUDA kernels" ;;
        *) note="dmfx._C does not import" ;;
    esac
    [[ -n $errors ]] && note+="; $errors" || note+="; $(toolchain)"
    if ((rc != 0)); then
        record build "$(result_of "$rc")" "$elapsed" "exit $rc; $note; see build.log"
    elif [[ $errors == *"still crashes"* || ( -n $errors && $errors != *"errors raise"* ) ]]; then
        record build FAIL "$elapsed" "$note"
    elif [[ $GPU == yes && $EXT != cuda ]]; then
        record build FAIL "$elapsed" "$note, on a GPU machine"
    elif [[ $GPU != yes ]]; then
        record build PASS "$elapsed" "no GPU: $note (CPU-only build)"
    else
        record build PASS "$elapsed" "$note"
    fi
}

step_tests() {
    check_extension
    if [[ $EXT == missing ]]; then
        record tests SKIP 0 "dmfx._C does not import: run the build step first"
        return
    fi
    # With pytest-xdist (a GPU machine has many cores): workers of two threads each. On one
    # 16-core machine, 14 workers of 16 threads each made the CPU tests the slowest part.
    local parallel=() threads=()
    if "$PYTHON" -c "import xdist" 2> /dev/null; then
        parallel=(-n "${TEST_WORKERS:-8}") threads=(OMP_NUM_THREADS=2)
    fi
    run_logged tests "${TESTS_TIMEOUT:-240}" env "${threads[@]}" \
        "$PYTHON" -m pytest -q -rfEs -p no:cacheprovider --durations=15 "${parallel[@]}" \
        "${pytest_args[@]}"
    local rc=$? note cuda_skips
    note=$(pytest_tally "$STATE/tests.log")
    # -rs lists the skip reasons as "SKIPPED [N] file:line: reason"
    cuda_skips=$(awk 'tolower($0) ~ /^skipped \[[0-9]+\].*cuda/ {
        match($0, /\[[0-9]+\]/); n += substr($0, RSTART + 1, RLENGTH - 2) } END { print n + 0 }' \
        "$STATE/tests.log")
    if ((cuda_skips > 0)); then
        [[ $GPU == yes ]] && note+="; $cuda_skips CUDA tests skipped" ||
            note+="; no GPU: $cuda_skips CUDA tests skipped"
    fi
    record tests "$(result_of "$rc")" "$ELAPSED" "$note"
}

sanitize() {  # TOOL TIMEOUT FILTER(all|dmfx) SELECTION TEST-FILE...
    local tool=$1 limit=$2 filter=$3 selection=$4 sanitizer rc summary note
    shift 4
    gpu_step_ready "$tool" || return
    if ! sanitizer=$(find_sanitizer); then
        record "$tool" FAIL 0 "$NO_SANITIZER"
        return
    fi
    local args=(--tool "$tool" --error-exitcode 9 --print-limit 100 --show-backtrace device)
    [[ $filter == dmfx ]] && args+=("${DMFX_KERNELS[@]}")
    # Without the caching allocator every tensor is its own cudaMalloc, so an access past a
    # tensor's end is out of bounds (inside a cached block it is not) and fresh memory is
    # uninitialised for initcheck.
    run_logged "$tool" "$limit" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$sanitizer" "${args[@]}" \
        "$PYTHON" -m pytest -q -p no:cacheprovider -k "$selection" "$@"
    rc=$?
    # "ERROR SUMMARY: 0 errors"; racecheck: "RACECHECK SUMMARY: 0 hazards displayed (0 errors, ...)"
    summary=$(grep -E '(ERROR|RACECHECK) SUMMARY' "$STATE/$tool.log" | tail -n 1 | sed -E 's/^=+ *//')
    note="${summary:-no sanitizer summary}; pytest: $(pytest_tally "$STATE/$tool.log")"
    if [[ -n $summary && ! $summary =~ (^|[^0-9])0\ errors ]]; then
        note+="; $(grep -cE '^=+ +at .*dmfx::' "$STATE/$tool.log") reports in dmfx kernels"
        rc=9
    elif [[ -z $summary ]] && ((rc == 0)); then
        rc=1
    fi
    record "$tool" "$(result_of "$rc")" "$ELAPSED" "$note"
}

step_bench() {
    gpu_step_ready bench || return
    local rc count f
    run_logged bench "${BENCH_TIMEOUT:-540}" env OUT="$STATE/bench" PYTHON="$PYTHON" \
        bash benchmarks/run_gpu.sh
    rc=$?
    count=$("$PYTHON" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["benchmarks"]))' \
        "$STATE/bench/bench.json" 2>/dev/null) || count=0
    if [[ -n $OUT_DIR ]]; then
        for f in bench.json RESULTS.md; do
            if [[ -s $STATE/bench/$f ]]; then
                cp "$STATE/bench/$f" "$OUT_DIR/$f" && out_files+=("$f")
            fi
        done
    fi
    record bench "$(result_of "$rc")" "$ELAPSED" \
        "$count benchmarks; pytest: $(pytest_tally "$STATE/bench.log")"
}

step_dmfx_bench() {  # the command users run, on the benchmark shapes, one log
    gpu_step_ready dmfx-bench || return
    local rc f runs=build/gpu-check/dmfx-bench
    # The JSON reports go straight into $OUT: a call cut at the device's limit keeps those done.
    [[ -n $OUT_DIR ]] && runs=$OUT_DIR/dmfx-bench
    rm -rf "$runs"
    mkdir -p "$runs"
    # Every peer is checked against dmfx, then timed. Each command runs whatever the one before
    # did; the step fails if any of them failed.
    local bench="$PYTHON -m dmfx bench --device cuda --quiet --min-time 0.5"
    local script=(
        "set -x; failed=0"
        # torch.compile's peers for the loss at B = 1M only (the bench step's suites time them
        # at the other sizes): compiling at every shape would take most of this step's time
        "$bench --shape ml-1m --batch 256 --skip compile --json $runs/ml-1m-B256.json || failed=1"
        "$bench --shape ml-1m --batch 8192 --skip compile --json $runs/ml-1m-B8192.json || failed=1"
        "$bench --shape amazon-movies --batch 8192 --ops sparse_rows_matmul --json $runs/amazon-movies-B8192.json || failed=1"
        "$bench --ops cosine_nce_loss --batch 1048576 --json $runs/loss-B1048576.json || failed=1"
        "$bench --shape 2m-1m-50m --hidden 64,64 --batch 8192 --ops sparse_rows_matmul sample_negatives --negatives 4 --json $runs/2m-1m-50m-B8192.json || failed=1"
        "exit \$failed"
    )
    local IFS=$'\n'
    run_logged dmfx-bench "${DMFX_BENCH_TIMEOUT:-400}" bash -c "${script[*]}"
    rc=$?
    if [[ -n $OUT_DIR ]]; then
        for f in "$runs"/*.json; do
            [[ -s $f ]] && out_files+=("dmfx-bench/${f##*/}")
        done
    fi
    record dmfx-bench "$(result_of "$rc")" "$ELAPSED" "tables in dmfx-bench.log ($runs)"
}

step_scale() {  # the GPU runs issues ask for beyond the benchmark suites, one log
    gpu_step_ready scale || return
    local rc runs=build/gpu-check/scale-runs
    rm -rf "$runs"
    mkdir -p "$runs"
    # Each command runs whatever the one before did; the step fails if any of them failed.
    local script=(
        "set -x; failed=0"
        # the Amazon-scale training run, bounded (README: Amazon scale on one machine)
        "$PYTHON benchmarks/amazon_scale.py --device cuda --ranks 1 --batch-size 8192 --out $runs/amazon-scale || failed=1"
        # the sharded mode under NCCL on one GPU (world size 1), on ML-1M-sized data (no download)
        "$PYTHON -m torch.distributed.run --standalone --nproc_per_node=1 -m dmfx train --dataset synthetic:6040x3706x1000000 --distributed sharded --device cuda --epochs 2 --batch-size 8192 --quiet --output $runs/sharded-nccl || failed=1"
        "cat $runs/sharded-nccl/epochs.jsonl"
        "exit \$failed"
    )
    local IFS=$'\n'
    run_logged scale "${SCALE_TIMEOUT:-540}" bash -c "${script[*]}"
    rc=$?
    record scale "$(result_of "$rc")" "$ELAPSED" "see scale.log ($runs)"
}

# ---------------------------------------------------------------------------------- summary

bench_ratios() {  # one line per benchmark group: dmfx's median and each peer's median / dmfx's
    "$PYTHON" - "$STATE/bench/bench.json" <<'PY'
import json
import sys

from benchmarks.report import BASELINE, _groups, _time

with open(sys.argv[1]) as f:
    data = json.load(f)
for group, benches in _groups(data["benchmarks"]).items():
    base = next((b for b in benches if b["extra_info"].get("contender") == BASELINE), None)
    if base is None:
        continue
    median = base["stats"]["median"]
    peers = ", ".join(f"{b['extra_info'].get('contender', b['name'])} "
                      f"{b['stats']['median'] / median:.2f}x" for b in benches if b is not base)
    print(f"  {group}: dmfx {_time(median)} | {peers}")
PY
}

summary() {
    local commit sanitizer step result seconds note
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
    if [[ $commit != unknown && -n $(git status --porcelain 2>/dev/null) ]]; then
        commit+=" + uncommitted changes"
    fi
    sanitizer=$(find_sanitizer) || sanitizer=$NO_SANITIZER
    check_extension
    echo "==================== dmfx GPU check: summary ===================="
    echo "commit $commit, $(date -u '+%Y-%m-%d %H:%M UTC')"
    if [[ $GPU == yes ]]; then
        echo "GPU: $(probe_value gpu_name)"
    else
        echo "GPU: no GPU (torch.cuda.is_available() is False): CUDA steps skipped"
    fi
    echo "torch $(probe_value torch), CUDA $(probe_value torch_cuda); dmfx._C: $EXT"
    echo "compute-sanitizer: $sanitizer"
    echo
    printf '%-10s %-7s %6s  %s\n' step result time note
    for step in "${ALL_STEPS[@]}"; do
        if [[ -f $STATE/$step.status ]]; then
            IFS=$'\t' read -r result seconds note < "$STATE/$step.status"
            printf '%-10s %-7s %4s s  %s\n' "$step" "$result" "$seconds" "$note"
        else
            printf '%-10s %-7s %6s  %s\n' "$step" "-" "" "not run since the last build"
        fi
    done
    if [[ -s $STATE/bench/bench.json ]]; then
        echo
        echo "benchmarks: contender median / dmfx median (above 1: dmfx is faster)"
        bench_ratios 2>&1 || echo "  (bench.json unreadable)"
    fi
    echo
    echo "logs: $STATE/<step>.log and $STATE/bench/ (those of this call also under \$OUT when set)"
}

failed=0
for step in "${ALL_STEPS[@]}"; do
    [[ $selected == *" $step "* ]] || continue
    case $step in
        build) step_build ;;
        tests) step_tests ;;
        memcheck) sanitize memcheck "${MEMCHECK_TIMEOUT:-120}" dmfx "$CUDA_TESTS" "${OPS_TESTS[@]}" ;;
        # initcheck instruments every kernel: it must see each write to know what is initialised.
        initcheck)
            sanitize initcheck "${INITCHECK_TIMEOUT:-120}" all "$CUDA_TESTS_LIGHT" "${OPS_TESTS[@]}" ;;
        synccheck)
            sanitize synccheck "${SYNCCHECK_TIMEOUT:-60}" dmfx "$CUDA_TESTS_LIGHT" "${OPS_TESTS[@]}" ;;
        # racecheck checks shared memory only, which hybrid_bce_loss's block reduction alone uses.
        racecheck)
            sanitize racecheck "${RACECHECK_TIMEOUT:-60}" dmfx "$CUDA_TESTS_LIGHT" \
                tests/test_hybrid_bce_loss.py ;;
        bench) step_bench ;;
        dmfx-bench) step_dmfx_bench ;;
        scale) step_scale ;;
    esac
    case $(cut -f1 "$STATE/$step.status" 2>/dev/null) in FAIL | TIMEOUT) failed=1 ;; esac
done

summary | tee "$STATE/summary.txt"
if [[ -n $OUT_DIR ]]; then
    cp "$STATE/summary.txt" "$OUT_DIR/summary.txt"
    # The device tool returns at most 8 files: pack the logs when a long call wrote more.
    if ((${#out_files[@]} > 7)); then
        tar -czf "$OUT_DIR/gpu-check-logs.tar.gz" -C "$OUT_DIR" "${out_files[@]}" &&
            (cd "$OUT_DIR" && rm -f "${out_files[@]}")
    fi
fi
exit "$failed"
