"""A run's metrics: one JSON row per optimizer step in `metrics.jsonl`, and the loss plot."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Appends rows to `path` (main process only: pass enabled=False elsewhere)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.file = open(path, "a") if enabled else None

    def write(self, row: dict) -> None:
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from; they will be logged again."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(line + "\n" for line in rows if json.loads(line)["step"] <= step))


def plot_losses(metrics_path: Path, png: Path, title: str = "loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
    evals = [r for r in rows if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
