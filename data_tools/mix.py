"""Data mixtures: named sources sampled by weight each epoch, a replay source, curriculum order.

`mix_epoch` is a plain function the training loop calls once per epoch: the same (seed, epoch)
always gives the same list, and a different epoch gives a fresh draw.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from llava_lite.conversation import Conversation
from llava_lite.data import read_conversations

from .tagging import heuristic_tags


@dataclass
class Source:
    name: str
    conversations: list[Conversation] | None = None  # or read from `path`
    path: str | Path | None = None
    fmt: str = "auto"
    image_folder: str | Path | None = None
    weight: float = 1.0

    def load(self) -> list[Conversation]:
        if self.conversations is None:
            if self.path is None:
                raise ValueError(f"source {self.name!r} has neither conversations nor a path")
            self.conversations = read_conversations(self.path, self.fmt, self.image_folder)
        return self.conversations


def length_score(conv: Conversation) -> float:
    return float(sum(len(m.content) for m in conv.messages) + 500 * len(conv.images))


def tag_score(conv: Conversation) -> float:
    return float(len(heuristic_tags(conv)))


DIFFICULTY: dict[str, Callable[[Conversation], float]] = {"length": length_score, "tags": tag_score}


def _draw(items: list[Conversation], n: int, rng: random.Random) -> list[Conversation]:
    """n items: whole shuffled passes first, so each item is used before any repeats (with replacement)."""
    out: list[Conversation] = []
    while len(out) < n and items:
        out += rng.sample(items, min(len(items), n - len(out)))
    return out


def mix_epoch(
    sources: list[Source],
    seed: int = 0,
    epoch: int = 0,
    size: int | None = None,
    replay: Source | None = None,
    replay_fraction: float = 0.0,
    curriculum: str | Callable[[Conversation], float] | None = None,
) -> list[Conversation]:
    """The conversations of one epoch.

    `size` (default: all sources' records together) is split across sources in proportion to
    their weights; a source asked for more than it has is sampled with replacement. `replay`
    adds `replay_fraction * size` general-text records on top, against forgetting. Order is
    shuffled, or easy-to-hard by `curriculum` ("length", "tags" or a score function)."""
    rng = random.Random(f"{seed}:{epoch}")  # a string seed hashes both numbers without collisions
    data = {s.name: s.load() for s in sources}
    total_w = sum(s.weight for s in sources)
    if not sources or total_w <= 0:
        raise ValueError("a mixture needs at least one source with a positive weight")
    size = sum(len(v) for v in data.values()) if size is None else size
    # Largest-remainder rounding so the counts add up to exactly `size`.
    exact = [size * s.weight / total_w for s in sources]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(sources)), key=lambda i: exact[i] - counts[i], reverse=True)[: size - sum(counts)]:
        counts[i] += 1
    empty = [s.name for s, n in zip(sources, counts) if n and not data[s.name]]
    if empty:
        raise ValueError(f"sources {empty} have a weight but no records")
    out = [c for s, n in zip(sources, counts) for c in _draw(data[s.name], n, rng)]
    if replay is not None and replay_fraction > 0:
        out += _draw(replay.load(), round(replay_fraction * size), rng)
    rng.shuffle(out)
    if curriculum is not None:
        score = DIFFICULTY[curriculum] if isinstance(curriculum, str) else curriculum
        out.sort(key=score)  # stable: equal scores keep their shuffled order
    return out
