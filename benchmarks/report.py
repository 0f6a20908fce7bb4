"""Markdown tables from a pytest-benchmark JSON of the dmfx suite.

    python benchmarks/report.py bench.json > RESULTS.md

One table per group (an op at one shape): each contender's median time per call, its spread,
and ``vs dmfx`` = contender median / dmfx median, i.e. "dmfx is N x faster" (below 1: slower).
"""
from __future__ import annotations

import argparse
import json
import sys

BASELINE = "dmfx"


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


def render(data: dict) -> str:
    info = data.get("machine_info", {}).get("dmfx", {})
    lines = [
        f"- device: {info.get('device', 'unknown')}",
        f"- torch {info.get('torch', '?')}" + (f", CUDA {info['cuda']}" if info.get("cuda") else ""),
        f"- date: {data.get('datetime', '?')[:10]}",
        f"- command: `{info.get('command', '?')}`",
        f"- load average (1/5/15 min) when the run ended, this run's own threads included: "
        f"{info.get('loadavg', '?')}",
        "",
        "Median per call: forward + backward of an op, one sampler call, or 20 whole training steps"
        " (forward, backward, Adam). `vs dmfx` = contender median / dmfx median: above 1, dmfx is"
        " that many times faster; below 1, slower. Training steps: `epoch (projected)` = steps per"
        " epoch x median step, training only.",
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
            row = (f"| {name} | {_time(s['median'])} | {_time(s['iqr'])} | "
                   f"{s['rounds']} x {s['iterations']} | {ratio} |")
            for key, _, fmt in extras:
                row += f" {fmt(extra[key]) if key in extra else ''} |"
            lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="file written by pytest --benchmark-json=...")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        sys.stdout.write(render(json.load(f)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
