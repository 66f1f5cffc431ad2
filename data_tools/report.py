"""A data report: counts, a tag histogram and length histograms (PNG), and a summary JSON."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt

from llava_lite.data.conversation import Conversation

from .tagging import complexity, diversity, query_text


def summarize(convs: list[Conversation], tag_lists: list[list[str]]) -> dict:
    turns = [sum(m.role == "user" for m in c.messages) for c in convs]
    return {
        "records": len(convs),
        "with_images": sum(bool(c.images) for c in convs),
        "text_only": sum(not c.images for c in convs),
        "turns": sum(turns),
        "mean_turns": sum(turns) / max(1, len(convs)),
        "distinct_tags": diversity(tag_lists),
        "mean_tags_per_sample": sum(map(complexity, tag_lists)) / max(1, len(tag_lists)),
        "tag_counts": dict(Counter(t for tags in tag_lists for t in set(tags)).most_common()),
    }


def _bar(counts: dict[str, int], path: Path, top: int = 40) -> None:
    items = list(counts.items())[:top]
    fig, ax = plt.subplots(figsize=(8, 0.25 * len(items) + 1.5))
    ax.barh([k for k, _ in items][::-1], [v for _, v in items][::-1], color="tab:blue")
    ax.set_xlabel("samples with this tag")
    ax.set_title(f"Tag histogram (top {len(items)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _lengths(convs: list[Conversation], path: Path) -> None:
    query = [len(query_text(c).split()) for c in convs]
    answer = [sum(len(m.content.split()) for m in c.messages if m.role == "assistant") for c in convs]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, values, title in zip(axes, (query, answer), ("request length (words)", "response length (words)")):
        ax.hist(values, bins=min(40, max(5, len(set(values)))), color="tab:green")
        ax.set_title(title)
        ax.set_ylabel("samples")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(convs: list[Conversation], tag_lists: list[list[str]], out_dir: Path) -> dict:
    """Writes summary.json, tags.png and lengths.png into out_dir; returns the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(convs, tag_lists)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    _bar(summary["tag_counts"], out_dir / "tags.png")
    _lengths(convs, out_dir / "lengths.png")
    return summary
