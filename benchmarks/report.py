"""Markdown tables from pytest-benchmark JSONs of the dmfx suite.

    python benchmarks/report.py bench.json > RESULTS.md
    python benchmarks/report.py out/test_*.json --merged-json out/bench.json > RESULTS.md

One table per group (an op at one shape): each contender's median time per call, its spread,
and ``vs dmfx`` = contender median / dmfx median, i.e. "dmfx is N x faster" (below 1: slower).
Several files (``run_gpu.sh`` writes one per suite) are reported as one run, in the order given;
``--merged-json`` also writes them as one pytest-benchmark-shaped JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

BASELINE = "dmfx"
# pytest-benchmark computes an IQR from any number of rounds; under this many it means little.
IQR_ROUNDS = 4


def _sig3(x: float) -> str:
    """Three significant digits, trailing zeros kept (2.00, 12.5, 124)."""
    return f"{x:.{max(0, 2 - len(str(int(x))) + 1)}f}"


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{_sig3(seconds / scale)} {unit}"
    return f"{_sig3(seconds * 1e9)} ns"


def _rate(per_s: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if per_s >= scale:
            return f"{_sig3(per_s / scale)} {unit}"
    return _sig3(per_s)


# extra_info keys shown as columns where a group has them: (key, header, format).
EXTRA_COLUMNS = [
    ("samples_per_s", "samples/s", _rate),
    ("pairs_per_s", "pairs/s", _rate),
    ("epoch_s", "epoch (projected)", _time),
]


def _groups(benchmarks):
    """Groups in run order, each a list of benchmarks in run order."""
    groups: dict[str, list] = {}
    for b in benchmarks:
        groups.setdefault(b["group"] or b["name"], []).append(b)
    return groups


def merge(runs: list[tuple[str, dict]]) -> dict:
    """Several pytest-benchmark JSONs ``(name, data)`` as one: the first's machine and commit
    info, every file's benchmarks in order, and ``merged_from`` with each file's own command,
    date, load and commit."""
    if not runs:
        raise ValueError("no benchmark JSON to merge")
    first = runs[0][1]
    return {
        **{k: v for k, v in first.items() if k != "benchmarks"},
        "benchmarks": [b for _, data in runs for b in data.get("benchmarks", [])],
        "merged_from": [{
            "file": name,
            "datetime": data.get("datetime"),
            "commit_info": data.get("commit_info"),
            "machine_info": {"dmfx": data.get("machine_info", {}).get("dmfx", {})},
            "benchmarks": len(data.get("benchmarks", [])),
        } for name, data in runs],
    }


def _commit(info: dict | None) -> str:
    """pytest-benchmark's commit_info in a few words."""
    if not info or info.get("id") in (None, "unknown", "unversioned"):
        return "unknown (not run from a git checkout)"
    return (f"{info['id'][:12]}" + (" + uncommitted changes" if info.get("dirty") else "")
            + (f" ({info['branch']})" if info.get("branch") not in (None, "(unknown)") else ""))


def _distinct(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def render(data: dict) -> str:
    runs = data.get("merged_from") or [data]
    infos = [r.get("machine_info", {}).get("dmfx", {}) for r in runs]
    info = infos[0]
    float32 = info.get("float32") or {}
    commands = _distinct([f"`{i.get('command', '?')}`" for i in infos])
    lines = [
        f"- device: {info.get('device', 'unknown')}"
        + (f", driver {info['driver']}" if info.get("driver") else ""),
        f"- torch {info.get('torch', '?')}"
        + (f", CUDA {info['cuda']}" if info.get("cuda") else ""),
        f"- commit: {', '.join(_distinct([_commit(r.get('commit_info')) for r in runs]))}",
        f"- float32: matmul precision {float32.get('float32_matmul_precision', '?')}, cuBLAS "
        f"allow_tf32 {float32.get('cuda_matmul_allow_tf32', '?')}, cuDNN allow_tf32 "
        f"{float32.get('cudnn_allow_tf32', '?')}",
        f"- date: {', '.join(_distinct([(r.get('datetime') or '?')[:10] for r in runs]))}",
        f"- command: {commands[0]}" if len(commands) == 1 else
        "- commands:" + "".join(f"\n  - {c}" for c in commands),
        f"- load average (1/5/15 min) when the run ended, this run's own threads included: "
        f"{'; '.join(str(i.get('loadavg', '?')) for i in infos)}",
        "",
        "Median per call: forward + backward of an op, one sampler call, or 20 whole training steps"
        " (forward, backward, Adam). `vs dmfx` = contender median / dmfx median: above 1, dmfx is"
        " that many times faster; below 1, slower. Training steps: `epoch (projected)` = steps per"
        f" epoch x median step, training only. IQR: n/a under {IQR_ROUNDS} rounds.",
    ]
    for group, benches in _groups(data["benchmarks"]).items():
        base = next((b for b in benches if b["extra_info"].get("contender") == BASELINE), None)
        extras = [(key, label, fmt) for key, label, fmt in EXTRA_COLUMNS
                  if any(key in b["extra_info"] for b in benches)]
        lines += ["", f"### {group}", "",
                  "| contender | median | IQR | rounds x iterations | vs dmfx |"
                  + "".join(f" {label} |" for _, label, _ in extras),
                  "|---|---:|---:|---:|---:|" + "---:|" * len(extras)]
        for b in benches:
            s, extra = b["stats"], b["extra_info"]
            name = extra.get("contender", b["name"])
            if base is None:
                ratio = "n/a"
            elif b is base:
                ratio = "1 (baseline)"
            else:
                ratio = f"{s['median'] / base['stats']['median']:.2f}x"
            iqr = _time(s["iqr"]) if s["rounds"] >= IQR_ROUNDS else "n/a"
            row = (f"| {name} | {_time(s['median'])} | {iqr} | "
                   f"{s['rounds']} x {s['iterations']} | {ratio} |")
            for key, _, fmt in extras:
                row += f" {fmt(extra[key]) if key in extra else ''} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def write_json(path: str, data: dict) -> None:
    """``data`` as JSON at ``path``, atomically: a reader (or a kill) never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+",
                        help="files written by pytest --benchmark-json=..., reported as one run")
    parser.add_argument("--merged-json", metavar="FILE",
                        help="also write the files as one pytest-benchmark-shaped JSON")
    args = parser.parse_args(argv)
    runs = []
    for path in args.json:
        with open(path) as f:
            runs.append((os.path.basename(path), json.load(f)))
    data = runs[0][1] if len(runs) == 1 else merge(runs)
    if args.merged_json:
        write_json(args.merged_json, data)
    sys.stdout.write(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
