"""Markdown tables from pytest-benchmark JSONs of the dmfx suite.

    python benchmarks/report.py bench.json > RESULTS.md
    python benchmarks/report.py out/test_*.json --merged-json out/bench.json > RESULTS.md
    python benchmarks/report.py bench.json --readme README.md   # also its headline table

One table per group (an op at one shape): each contender's median time per call, its spread,
and ``vs dmfx`` = contender median / dmfx median, i.e. "dmfx is N x faster" (below 1: slower).
Several files (``run_gpu.sh`` writes one per suite) are reported as one run, in the order given;
``--merged-json`` also writes them as one pytest-benchmark-shaped JSON. ``--readme`` rewrites the
README's headline table (between ``<!-- bench:headline -->`` and ``<!-- /bench:headline -->``)
from the run: a few groups (:data:`HEADLINE`), dmfx beside its PyTorch peers.
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


# The README's headline table: (group, what, dmfx's contender and the words after its time,
# [(peer contender, its name)], the figure compared). Figures: "median" (per call), "epoch"
# (the projected training epoch), "step" (per training step: the median of a call of
# TRAIN_STEPS steps).
TRAIN_STEPS = 20  # dmfx.bench.train_step.STEPS
_FIRST_LAYER_PEERS = [("embedding_bag", "`F.embedding_bag`"), ("sparse.mm", "`torch.sparse.mm`"),
                      ("dense", "dense rows (prebuilt) @ W")]
_LOSS_PEERS = [("eager", "eager"), ("compile", "`torch.compile`")]
HEADLINE = [
    ("sparse_rows_matmul fwd+bwd ml-100k-h256-B256", "first layer fwd+bwd, ml-100k, h=256, B=256",
     "dmfx", "", _FIRST_LAYER_PEERS, "median"),
    ("sparse_rows_matmul fwd+bwd ml-1m-h256-B8192",
     "first layer fwd+bwd, ML-1M-like, h=256, B=8192", "dmfx", "", _FIRST_LAYER_PEERS, "median"),
    ("cosine_nce_loss fwd+bwd k64-B8192", "cosine + clamp + nce fwd+bwd, k=64, B=8192", "dmfx",
     "", _LOSS_PEERS, "median"),
    ("cosine_nce_loss fwd+bwd k64-B262144", "cosine + clamp + nce fwd+bwd, k=64, B=262144",
     "dmfx", "", _LOSS_PEERS, "median"),
    ("sample_negatives epoch ml-1m-neg7", "negatives for an ML-1M-like epoch (7 per rating)",
     "dmfx", "", [("reference", "vectorised rejection sampler")], "median"),
    ("DMF training step ml-100k-h256-64-B256",
     "DMF-2-nce training, ml-100k epoch, batch 256 (projected)", "dmfx", "",
     [("dense-input", "RecBole's dense-input method"), ("embedding_bag", "`embedding_bag` towers")],
     "epoch"),
    ("DMF training step 200k-1m-5m-h64-64-B256", "DMF training step, 200k x 1M x 5M, h=64, B=256",
     "dmfx-sparse-grad", " (`--sparse-grad`)", [("dmfx", "dmfx with dense Adam")], "step"),
]
README_BEGIN, README_END = "<!-- bench:headline -->", "<!-- /bench:headline -->"


def _figure(bench: dict, kind: str) -> float:
    if kind == "epoch":
        return bench["extra_info"]["epoch_s"]
    return bench["stats"]["median"] / (TRAIN_STEPS if kind == "step" else 1)


def headline(data: dict, source: str) -> str:
    """The README's headline table from a run (``source``: the JSON's path, named in it)."""
    info = (data.get("merged_from") or [data])[0].get("machine_info", {}).get("dmfx", {})
    found = {(b["group"], b["extra_info"].get("contender")): b for b in data["benchmarks"]}
    rows = []
    for group, what, ours, note, peers, kind in HEADLINE:
        base = found.get((group, ours))
        there = [(label, found[(group, name)]) for name, label in peers if (group, name) in found]
        if base is None or not there:
            continue
        mine = _figure(base, kind)
        rows.append(f"| {what} | {_time(mine)}{note} | "
                    + ", ".join(f"{label} {_time(_figure(b, kind))}" for label, b in there)
                    + " | " + " / ".join(f"{_figure(b, kind) / mine:.2f}x" for _, b in there)
                    + " |")
    if not rows:
        raise ValueError(f"{source} holds none of the headline table's groups")
    device = info.get("device", "unknown device")
    return "\n".join([
        f"{device}, torch {info.get('torch', '?')}, {(data.get('datetime') or '?')[:10]}: "
        f"written by `python benchmarks/report.py {source} --readme README.md` from that run "
        "(every figure in it is in benchmarks/RESULTS.md).",
        "",
        "| what | dmfx | PyTorch peers (same run) | dmfx faster by |",
        "|---|---:|---|---:|",
        *rows,
    ])


def write_readme(path: str, table: str) -> None:
    """Replace the block between README_BEGIN and README_END in ``path`` by ``table``."""
    with open(path) as f:
        text = f.read()
    pattern = re.compile(re.escape(README_BEGIN) + r"\n.*?" + re.escape(README_END), re.S)
    if len(pattern.findall(text)) != 1:
        raise ValueError(f"{path} must hold one {README_BEGIN} ... {README_END} block")
    text = pattern.sub(lambda _: f"{README_BEGIN}\n{table}\n{README_END}", text)
    _write_atomic(path, lambda f: f.write(text))


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
    _write_atomic(path, lambda f: json.dump(data, f, indent=2))


def _write_atomic(path: str, write) -> None:
    """``write(file)`` into a temporary file beside ``path``, which then replaces ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            write(f)
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
    parser.add_argument("--readme", metavar="README",
                        help="also rewrite the headline table of this README from the run")
    args = parser.parse_args(argv)
    runs = []
    for path in args.json:
        with open(path) as f:
            runs.append((os.path.basename(path), json.load(f)))
    data = runs[0][1] if len(runs) == 1 else merge(runs)
    if args.merged_json:
        write_json(args.merged_json, data)
    if args.readme:
        write_readme(args.readme, headline(data, " ".join(args.json)))
    sys.stdout.write(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
