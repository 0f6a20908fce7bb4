"""Draws training curves from the `history` of one or more dmfx metrics.json files.

    python tools/plot_history.py runs/ml-100k-dmf/metrics.json -o curves.png

Needs matplotlib (`pip install matplotlib`, or the package's `plot` extra).
"""
import argparse
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def validation_keys(history: list) -> tuple:
    """The HR and NDCG keys of a run's validation entries: ``hr@10`` under the sampled
    protocol, ``full_hr@10`` under ``--protocol full``."""
    valid = next((h["valid"] for h in history if h.get("valid")), None)
    if valid is None:
        raise SystemExit("the run has no validation metrics to draw (a split without validation "
                         "interactions)")
    hr = next(k for k in valid if re.fullmatch(r"(full_)?hr@\d+", k))
    return hr, hr.replace("hr@", "ndcg@")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", type=Path, help="metrics.json files")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG to write")
    parser.add_argument("--labels", nargs="*", help="one label per file (default: folder names)")
    args = parser.parse_args()
    labels = args.labels or [m.parent.name for m in args.metrics]
    fig, (ax_loss, ax_hr, ax_ndcg) = plt.subplots(1, 3, figsize=(13, 3.8))
    shown = set()
    for path, label in zip(args.metrics, labels):
        metrics = json.loads(path.read_text())
        history = metrics["history"]
        hr, ndcg = validation_keys(history)
        shown.add((hr, ndcg))
        epochs = [h["epoch"] for h in history]
        ax_loss.plot(epochs, [h["loss"] for h in history], label=label)
        ax_hr.plot(epochs, [h["valid"][hr] for h in history], label=label)
        ax_ndcg.plot(epochs, [h["valid"][ndcg] for h in history], label=label)
        best = metrics.get("best_epoch")
        if best:
            ax_ndcg.axvline(best, color=ax_ndcg.lines[-1].get_color(), ls=":", lw=1)
    hrs, ndcgs = (" / ".join(sorted({keys[i] for keys in shown})) for i in (0, 1))
    for ax, title in ((ax_loss, "training loss"), (ax_hr, f"validation {hrs}"),
                      (ax_ndcg, f"validation {ndcgs} (dotted: best epoch)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.legend()
    fig.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=110)


if __name__ == "__main__":
    main()
