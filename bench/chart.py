"""Draw fan-out mails/s against audience size and worker count, with the machine's baseline."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after choosing the file-only backend

DOCS = Path(__file__).resolve().parent.parent / "docs"


def draw(series_file: Path, out: Path = DOCS / "fanout.png") -> Path:
    data = json.loads(series_file.read_text())
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for workers, points in sorted(data["points"].items()):
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        ax.plot(
            xs, ys, marker="o", label=f"notifier, {workers} worker process{'es' * (workers != '1')}"
        )
    ax.axhline(
        data["baseline"], color="grey", linestyle="--", label="smtp-source -s 8 (C), same sink"
    )
    ax.set_xlabel("audience (confirmed subscribers of one condition)")
    ax.set_ylabel("mails per second, event to sink")
    ax.set_xscale("log")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"fan-out end to end ({data['mode']} run, {data['when']})")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
