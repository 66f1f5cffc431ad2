"""A run's metrics: one JSON row per optimizer step in `metrics.jsonl`, and the loss plot."""
from __future__ import annotations

import json
from pathlib import Path


class MetricsLog:
    """Appends rows to `path` (main process only: pass enabled=False elsewhere), and sends their
    numbers to accelerate's trackers (train.report_to) when `acc` was made with them."""

    def __init__(self, path: Path, enabled: bool = True, acc=None):
        self.path = path
        self.file = open(path, "a") if enabled else None
        self.acc = acc if acc is not None and acc.log_with else None

    def write(self, row: dict) -> None:
        if self.file:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        if self.acc is not None:  # every process calls; accelerate logs on the main one
            numbers = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "step"}
            self.acc.log(numbers, step=row["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.acc is not None:
            self.acc.end_training()


def tracker_config(cfg) -> dict:
    """The run config flattened to the scalars trackers take (lists and None as text)."""
    import dataclasses

    flat = {}

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                flat[prefix + key] = value if isinstance(value, (int, float, str, bool)) else json.dumps(value)

    walk("", dataclasses.asdict(cfg))
    return flat


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
