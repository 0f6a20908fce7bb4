"""Bar chart of pytest-benchmark JSONs of the dmfx suite: how many times faster dmfx is than
each peer, per benchmark group (peer median / dmfx median, as in report.py).

    python benchmarks/plot.py bench.json -o docs/benchmarks_cpu.png
    python benchmarks/plot.py bench-out/suites/test_*.json -o bench.png   # several: one run

Needs matplotlib (the package's `plot` extra).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from report import BASELINE, _groups, merge  # noqa: E402  (run as a script from any folder)

# Calls of dmfx itself (e.g. with input validation) are not peers.
SKIP_PREFIX = BASELINE + "-"


def speedups(data: dict) -> list[tuple[str, list[tuple[str, float]]]]:
    """[(group, [(peer, peer median / dmfx median), ...]), ...] in run order."""
    out = []
    for group, benches in _groups(data["benchmarks"]).items():
        base = next((b for b in benches if b["extra_info"].get("contender") == BASELINE), None)
        if base is None:
            continue
        peers = [(b["extra_info"]["contender"], b["stats"]["median"] / base["stats"]["median"])
                 for b in benches if b is not base
                 and not b["extra_info"].get("contender", "").startswith(SKIP_PREFIX)]
        out.append((group, peers))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, nargs="+",
                        help="files written by pytest --benchmark-json=..., drawn as one run")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    runs = [(path.name, json.loads(path.read_text())) for path in args.json]
    data = runs[0][1] if len(runs) == 1 else merge(runs)
    rows = speedups(data)
    labels, values, colors = [], [], []
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    peer_color: dict[str, str] = {}
    for group, peers in rows:
        for peer, ratio in peers:
            peer_color.setdefault(peer, palette[len(peer_color) % len(palette)])
            labels.append(f"{group}  vs {peer}")
            values.append(ratio)
            colors.append(peer_color[peer])
    fig, ax = plt.subplots(figsize=(11.5, 0.28 * len(values) + 1.4))
    y = range(len(values))[::-1]
    ax.barh(list(y), values, color=colors)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xlim(0, max(values) * 1.12)
    for yi, v in zip(y, values):
        ax.text(v, yi, f" {v:.2f}x", va="center", fontsize=7)
    info = data.get("machine_info", {}).get("dmfx", {})
    ax.set_xlabel("peer median / dmfx median (above 1: dmfx is faster)")
    ax.set_title(f"dmfx vs PyTorch peers — {info.get('device', '?')}, torch {info.get('torch', '?')}",
                 fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110, bbox_inches="tight")


if __name__ == "__main__":
    main()
