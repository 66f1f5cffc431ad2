"""Data mixtures: named sources sampled by weight each epoch, a replay source, curriculum order.

`mix_epoch` writes one epoch of a mixture as a list of Conversations (`llava-lite data mix`):
the same (seed, epoch) always gives the same list, and a different epoch gives a fresh draw.
The draw itself is `llava_lite.data.mixture.epoch_draw`, shared with `llava-lite train`, which
re-draws its `data.sources` the same way every epoch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llava_lite.data.conversation import Conversation, DataError
from llava_lite.data.mixture import difficulty, epoch_draw, proportional_counts
from llava_lite.data.readers import read_conversations


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
    their weights; a source asked for more than it has gives whole shuffled passes, then a random
    subset (`llava_lite.data.mixture.epoch_draw`, the same draw the trainer uses). `replay` adds
    `replay_fraction * size` general-text records on top, against forgetting. Order is shuffled,
    or easy-to-hard by `curriculum` ("length", "tags" or a score function)."""
    data = [s.load() for s in sources]
    size = sum(len(d) for d in data) if size is None else size
    counts = proportional_counts(size, [s.weight for s in sources])
    if replay is not None and replay_fraction > 0:
        sources, data = [*sources, replay], [*data, replay.load()]
        counts.append(round(replay_fraction * size))
    empty = [s.name for s, d, n in zip(sources, data, counts) if n and not d]
    if empty:
        raise DataError(f"sources {empty} have a weight but no records", "empty file")
    scores = None
    if curriculum is not None:
        score = difficulty(curriculum) if isinstance(curriculum, str) else curriculum
        scores = [[score(c) for c in d] for d in data]
    pairs = epoch_draw([len(d) for d in data], counts, seed, epoch, scores)
    return [data[s][i] for s, i in pairs]
