"""Weighted data mixtures drawn afresh every epoch: the one implementation of the draw.

A mixture is a few sources (each a number of records) and how many records each contributes to
one epoch. `epoch_draw` turns that into the epoch's list of (source, record) pairs:

- a source asked for `count` of its `n` records gives `count // n` whole passes (each a fresh
  shuffle: every record is used before any repeats), then a random subset of `count % n`
  records without repeats. A source at weight 0.5 therefore sees a different half every epoch;
- the pairs of all sources are shuffled together, or, with a curriculum, sorted easy to hard by
  a difficulty score (a stable sort, so equal scores keep their shuffled order);
- everything is seeded by (seed, epoch) only: the same pair gives the same list in any process,
  after any restart, which is what lets a resumed training run continue exactly.

How many records a source contributes is the caller's choice: `repeat_counts` (training: the
weight is a repeat factor per epoch, 2.5 = the source twice and a random half, or a list of them,
one per epoch: `schedule`) or
`proportional_counts` (`llava-lite data mix`: an epoch of a given size split by weight).
`Mixture` holds a training run's file sources (each record once) and draws each epoch through
here; `data_tools.mix.mix_epoch` draws through the same functions.
"""
from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llava_lite.config import ConfigError
from llava_lite.data.conversation import Conversation, DataError
from llava_lite.data.readers import read_conversations
from llava_lite.data.rejects import Reject, describe
from llava_lite.data.tags import heuristic_tags

CURRICULA = ("length", "tags")


def epoch_rng(seed: int, epoch: int) -> random.Random:
    # A string seed hashes both numbers without collisions ((1, 23) and (12, 3) differ).
    return random.Random(f"{seed}:{epoch}")


def repeat_counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """Records per epoch when a weight is a repeat factor: round(size * weight), halves up."""
    for i, w in enumerate(weights):
        if not w >= 0 or math.isinf(w):
            raise ConfigError(f"source {i}: weight must be a finite number >= 0, got {w!r}")
    return [math.floor(n * w + 0.5) for n, w in zip(sizes, weights)]


def proportional_counts(total: int, weights: Sequence[float]) -> list[int]:
    """Split `total` records across sources in proportion to their weights; largest-remainder
    rounding makes the counts add up to exactly `total`."""
    if any(not w >= 0 for w in weights):
        raise ConfigError(f"weights must be >= 0, got {list(weights)}")
    total_w = sum(weights)
    if not weights or total_w <= 0:
        raise ConfigError("a mixture needs at least one source with a positive weight")
    exact = [total * w / total_w for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def draw(n: int, count: int, rng: random.Random) -> list[int]:
    """`count` indices into range(n): whole shuffled passes first, then a random subset."""
    if count and not n:
        raise ValueError(f"asked for {count} records from a source with none")
    out: list[int] = []
    while len(out) < count:
        out += rng.sample(range(n), min(n, count - len(out)))
    return out


def epoch_draw(
    sizes: Sequence[int],
    counts: Sequence[int],
    seed: int,
    epoch: int,
    scores: Sequence[Sequence[float]] | None = None,
) -> list[tuple[int, int]]:
    """The (source, record) pairs of one epoch: `counts[s]` records of source s (which has
    `sizes[s]`), shuffled together, or sorted easy to hard by `scores[s][record]` when given."""
    if len(sizes) != len(counts):
        raise ValueError(f"{len(sizes)} source sizes but {len(counts)} counts")
    rng = epoch_rng(seed, epoch)
    pairs = [(s, i) for s, (n, c) in enumerate(zip(sizes, counts)) for i in draw(n, c, rng)]
    rng.shuffle(pairs)
    if scores is not None:
        pairs.sort(key=lambda p: scores[p[0]][p[1]])
    return pairs


# ---- difficulty scores for a curriculum (easy = low) ---------------------------------------------
def tag_score(conv: Conversation) -> float:
    """The number of skill tags the keyword tagger gives the request (data/tags.py)."""
    return float(len(heuristic_tags(conv)))


def length_score(conv: Conversation) -> float:
    """Characters of text, an image counting as 500."""
    return float(sum(len(m.content) for m in conv.messages) + 500 * len(conv.images))


def difficulty(name: str) -> Callable[[Conversation], float]:
    """The difficulty score called `name` ("length" or "tags")."""
    if name == "length":
        return length_score
    if name == "tags":
        return tag_score
    raise ConfigError(f"unknown curriculum {name!r}; choose one of {CURRICULA}")


# ---- a training run's file sources ---------------------------------------------------------------
def schedule(weight: float | list[float]) -> list[float]:
    """A source's weight as one weight per epoch, the last holding on (a number is every epoch's)."""
    return list(weight) if isinstance(weight, list) else [weight]


@dataclass
class Mixture:
    """Every source's records once, and how each epoch draws from them."""

    conversations: list[Conversation]  # all sources, concatenated, each record once
    names: list[str]
    sizes: list[int]  # records per source
    weights: list[list[float]]  # per source: a repeat factor per epoch, the last holding on (schedule())
    seed: int
    scores: list[list[float]] | None = None  # difficulty per record, for a curriculum

    def counts_at(self, epoch: int) -> list[int]:
        """Records per source in `epoch`."""
        return repeat_counts(self.sizes, [w[min(epoch, len(w) - 1)] for w in self.weights])

    def epoch(self, epoch: int) -> list[int]:
        """Indices into `conversations` for one epoch, in order (shuffled, or easy to hard)."""
        offsets = [sum(self.sizes[:s]) for s in range(len(self.sizes))]
        pairs = epoch_draw(self.sizes, self.counts_at(epoch), self.seed, epoch, self.scores)
        return [offsets[s] + i for s, i in pairs]

    def phases(self) -> int:
        """Epochs until every weight holds on: 1 without a schedule."""
        return max(map(len, self.weights))

    def describe(self) -> str:
        def one(epoch: int) -> tuple[int, str]:
            counts = self.counts_at(epoch)
            return sum(counts), ", ".join(f"{n} {c}/{size}" for n, c, size in zip(self.names, counts, self.sizes))

        last = self.phases() - 1
        if not last:
            return "{} records per epoch ({}; drawn afresh each epoch)".format(*one(0))
        labels = [f"epoch {e}" for e in range(last)] + [f"from epoch {last}"]
        return "; ".join("{}: {} records ({})".format(label, *one(e)) for e, label in enumerate(labels)) \
            + "; drawn afresh each epoch"


def source_name(src, i: int) -> str:
    if src.name:
        return src.name
    return os.path.basename(src.path) if src.path else f"shards[{i}]"


def read_sources(sources, images: bool = True, allow_absolute: bool = False, key: str = "data.sources",
                 pairs: bool = False) -> tuple[list[list[Conversation]], list[Reject]]:
    """Read every source to the end: its good records, and a Reject (kind "record") for every
    bad one of every source, so that all problems are reported together. An empty file is an error.
    `pairs` (preference training): a record that is not a preference pair is a bad record."""
    convs, rejects = [], []
    for i, src in enumerate(sources):
        good, bad = read_conversations(src.path, src.format, src.image_folder, errors="collect",
                                       allow_absolute_images=allow_absolute)
        if not good and not bad:
            raise DataError(f"{src.path}: the file holds no records ({key}[{i}].path); give a JSON list or JSONL "
                            "file of conversations", "empty file")
        rejects += bad
        for c in good:
            c.isolate_turns = src.isolate_turns
        if not images:  # text-only stages: a record with images is a bad record like any other
            rejects += [Reject(c.id, c.source, "image in text-only stage", "record", 0,
                               f"{c.where}: stage 'text' got a record with images") for c in good if c.images]
            good = [c for c in good if not c.images]
        if pairs:
            rejects += [Reject(c.id, c.source, "not a pair", "record", 0, f"{c.where}: preference training needs "
                               "'prompt', 'chosen' and 'rejected'") for c in good if c.rejected is None]
            good = [c for c in good if c.rejected is not None]
        convs.append(good)
    return convs, rejects


def bad_records_error(rejects: list[Reject]) -> DataError:
    return DataError(f"{describe(rejects)}; fix them (llava-lite data validate FILE lists every one) or set "
                     "data.on_bad_record=skip to train without them", "bad records")


def load_mixture(sources, seed: int, curriculum: str | None = None, images: bool = True, *,
                 on_bad: str = "error", allow_absolute: bool = False, rejects: list | None = None,
                 pairs: bool = False) -> Mixture:
    """Read every file source once; each epoch then draws round(weight * size) records of each
    (see SourceConfig.weight; a list is one weight per epoch). `images=False` (text-only stages)
    rejects records with images. Bad records of all sources are reported together (on_bad="error")
    or dropped and appended to `rejects` (on_bad="skip")."""
    convs, bad = read_sources(sources, images, allow_absolute, pairs=pairs)
    if bad and on_bad != "skip":
        raise bad_records_error(bad)
    if rejects is not None:
        rejects += bad
    conversations = [c for cs in convs for c in cs]
    sizes = [len(cs) for cs in convs]
    weights = [schedule(src.weight) for src in sources]
    empty = [src.path for src, n, w in zip(sources, sizes, weights) if any(w) and not n]
    if empty:
        raise DataError(f"{empty[0]}: the source has a weight but no usable records"
                        + (f"; {describe(bad)}" if bad else ""), "empty file")
    scores = None
    if curriculum is not None:
        score = difficulty(curriculum)
        scores = [[score(c) for c in cs] for cs in convs]
    mix = Mixture(conversations, [source_name(s, i) for i, s in enumerate(sources)], sizes, weights, seed, scores)
    for epoch in range(mix.phases()):
        if not sum(mix.counts_at(epoch)):
            raise ConfigError(f"data.sources: the weights leave no record in epoch {epoch} (sizes {sizes}, weights "
                              f"{weights})")
    return mix
