"""webdataset shards read as a stream: the training source `data.sources[].shards`, and the
reading side of `llava-lite data shards` (`data_tools.shards` writes them and re-exports
`iter_shard_conversations` from here).

Layout. Each sample is `<key>.json` (a LLaVA record plus `image_keys`, naming its image members
in order; a text document is a `{"text": ...}` record) and the image files' bytes as stored on disk
(`<key>.png`, or `<key>.0.png`, `<key>.1.jpg`... for several). Tar reading and the shuffle buffer
are webdataset's (`tarfile_samples`, `filters.shuffle`); the record is parsed by the same LLaVA (or
text) reader as a JSON file, and (in training) rendered by the same `ConversationDataset.sample` as
the JSON path.

Splitting. One epoch has `world_size * readers` readers, `readers = max(1, num_workers)` per
process; reader (rank r, worker w) is slot `w * world_size + r`. The epoch's shard list (in
listed order, or shuffled from (seed, epoch) when shuffling) is dealt round-robin to the slots,
so every shard is read by exactly one reader per epoch. Each reader shuffles its samples through
a buffer seeded from (seed, epoch, slot). The splitting is done here rather than by webdataset's
node splitter because the trainer needs to know, before reading, how many batches each reader
yields (see `ShardStream.epoch_batches`) so that every process takes the same number of steps.
"""
from __future__ import annotations

import glob
import io
import itertools
import json
import os
import random
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext

from llava_lite.data.conversation import Conversation, DataError
from llava_lite.data.images import open_image
from llava_lite.data.readers import _PARSERS, _Record


# ---- shard lists ---------------------------------------------------------------------------------
def expand_shards(spec: str | Sequence[str], where: str = "shards") -> list[str]:
    """Shard paths from a brace pattern ("dir/shard-{000000..000003}.tar"), a glob
    ("dir/shard-*.tar", sorted), a plain path, or a list of any of these. Every shard must exist."""
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items or not all(isinstance(s, str) and s for s in items):
        raise DataError(f"{where}: expected a shard path, pattern or a list of them, got {spec!r}")
    paths: list[str] = []
    for item in items:
        if glob.has_magic(item.replace("{", "").replace("}", "")):
            found = sorted(glob.glob(item))
            if not found:
                raise DataError(f"{where}: no shard matches {item!r}")
            paths += found
        else:
            paths += wds.shardlists.expand_urls(item)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"{where}: {len(missing)} shard file(s) missing, first: {missing[0]}")
    return paths


def _is_meta(name: str) -> bool:
    base = os.path.basename(name)
    return base.startswith("__") and base.endswith("__")


def count_samples(path: str) -> int:
    """Samples in one shard, from the tar headers only (no member is read): the number of runs of
    consecutive members with the same key, which is how webdataset groups them."""
    try:
        with tarfile.open(path, "r:") as tar:
            n, last = 0, None
            for member in tar:
                if not member.isreg() or _is_meta(member.name):
                    continue
                key = base_plus_ext(member.name)[0]
                if key is not None and key != last:
                    n, last = n + 1, key
            return n
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"{path}: not a readable tar shard: {type(e).__name__}: {e}") from None


# ---- samples -------------------------------------------------------------------------------------
def read_samples(paths: Iterable[str]) -> Iterator[dict]:
    """Raw webdataset samples ({"__key__", "__url__", "json", "png", ...}) of the shards, in order."""
    return iter(wds.tariterators.tarfile_samples({"url": p} for p in paths))


def decode_sample(sample: dict) -> Conversation:
    """A raw shard sample as a validated Conversation; images are decoded to PIL.
    Errors name the shard, the sample key and the field."""
    where = f"{sample.get('__url__', '')}:{sample.get('__key__', '')}"
    if "json" not in sample:
        raise DataError(
            f"{where}: broken shard sample: no .json member "
            f"(members: {sorted(k for k in sample if not k.startswith('__'))})"
        )
    try:
        rec = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{where}: broken shard sample: the .json member is not JSON: {e}") from None
    if not isinstance(rec, dict):
        raise DataError(f"{where}: broken shard sample: the .json member must be an object")
    rid = "" if rec.get("id") is None else str(rec["id"])
    names = rec.get("image_keys", [])
    if not isinstance(names, list):
        raise DataError(f"{where}: field 'image_keys' must be a list of member names, got {names!r}")
    # The text goes through the LLaVA reader (a text document's through the text reader); the images come
    # from the members, not from paths.
    text = {k: v for k, v in rec.items() if k not in ("image", "images")}
    kind = "text" if "conversations" not in text and "text" in text else "llava"
    conv = _PARSERS[kind](text, _Record(where, rid, "", False))
    for name in names:
        if name not in sample:
            raise DataError(f"{where} (id={rid!r}): field 'image_keys' names a member {name!r} the sample lacks")
        conv.images.append(open_image(io.BytesIO(sample[name]), where, f"member {name!r}"))
    conv.id, conv.source = rid, where
    return conv.validate()


def _sample_id(sample: dict) -> str:
    try:
        rid = json.loads(sample["json"]).get("id")
    except Exception:  # the record itself is what is broken
        return ""
    return "" if rid is None else str(rid)


def _shuffled(samples: Iterator[dict], buffer: int, rng: random.Random) -> Iterator[dict]:
    if buffer <= 1:
        return samples
    return iter(wds.filters.shuffle(buffer, buffer, rng=rng)(samples))


# ---- splitting -----------------------------------------------------------------------------------
def deal_shards(n_shards: int, slots: int, seed: int, epoch: int, shuffle: bool) -> list[list[int]]:
    """Shard indices per reader slot for one epoch: the (shuffled) list dealt round-robin."""
    order = list(range(n_shards))
    if shuffle:
        random.Random(f"{seed}:{epoch}:shards").shuffle(order)
    return [order[s::slots] for s in range(slots)]


def round_robin_position(batches: Sequence[int], k: int) -> tuple[list[int], int]:
    """A DataLoader with workers yields their batches round-robin, an exhausted worker dropping
    out. After the first k batches: how many each worker gave, and which worker comes next."""
    if k > sum(batches):
        raise ValueError(f"cannot skip {k} batches of an epoch that has {sum(batches)}")
    taken, w = [0] * len(batches), 0
    for _ in range(k):
        while taken[w] >= batches[w]:
            w = (w + 1) % len(batches)
        taken[w] += 1
        w = (w + 1) % len(batches)
    return taken, w


def _node() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when it is up, else from the launcher's env."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def iter_shard_conversations(
    urls: str | Sequence[str], shuffle_buffer: int = 0, seed: int = 0, epoch: int = 0
) -> Iterator[Conversation]:
    """Stream Conversations (images decoded to PIL) from shards, split by node (torch.distributed
    or RANK / WORLD_SIZE) and by DataLoader worker. With `shuffle_buffer` > 0 the shard order and
    the samples (through a buffer) are shuffled, seeded by (seed, epoch); with 0 the order is the
    shards' as listed and the samples' as stored."""
    paths = expand_shards(urls)
    rank, world = _node()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    slot = worker * world + rank
    mine = deal_shards(len(paths), world * workers, seed, epoch, shuffle_buffer > 0)[slot]
    rng = random.Random(f"{seed}:{epoch}:{slot}")
    for sample in _shuffled(read_samples(paths[i] for i in mine), shuffle_buffer, rng):
        yield decode_sample(sample)


class ShardStream(IterableDataset):
    """Rendered training samples streamed from shards, for one process of `world_size`.

    Used with `DataLoader(stream, batch_size=batch_size, num_workers=num_workers)` (not through
    accelerate's prepare: the stream splits itself by process). `set_epoch(epoch, skip)` before
    each pass: the pass then yields the epoch's batches after the first `skip`, exactly as an
    uninterrupted pass would have continued (the skipped samples are read but never decoded).
    `epoch_batches(epoch)` is how many batches every process takes in that epoch: the fewest any
    process has, so that all of them step together; the rest of a longer process's samples are
    left out of that epoch (shards are dealt afresh each epoch)."""

    def __init__(
        self,
        shards: Sequence[str],
        renderer: Any,  # a ConversationDataset: its `sample(conv)` renders exactly as the JSON path
        *,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        text_only: bool = False,
        sizes: Sequence[int] | None = None,  # samples per shard; counted from the tar headers if None
    ) -> None:
        if not shards:
            raise DataError("a shard stream needs at least one shard")
        self.shards = list(shards)
        self.sizes = list(sizes) if sizes is not None else [count_samples(p) for p in self.shards]
        self.renderer = renderer
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank, self.world_size = rank, world_size
        self.readers = max(1, num_workers)
        self.text_only = text_only
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:  # samples in the whole data set (all processes)
        return sum(self.sizes)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def slot(self, rank: int, worker: int) -> int:
        return worker * self.world_size + rank

    def dealt(self, epoch: int) -> list[list[int]]:
        return deal_shards(len(self.shards), self.world_size * self.readers, self.seed, epoch, self.shuffle_buffer > 0)

    def reader_batches(self, epoch: int) -> list[list[int]]:
        """Batches per reader, [rank][worker], in one epoch."""
        dealt = self.dealt(epoch)
        return [[-(-sum(self.sizes[j] for j in dealt[self.slot(r, w)]) // self.batch_size) for w in range(self.readers)]
                for r in range(self.world_size)]

    def epoch_batches(self, epoch: int) -> int:
        return min(sum(per_worker) for per_worker in self.reader_batches(epoch))

    def __iter__(self) -> Iterator:
        info = get_worker_info()
        workers = info.num_workers if info else 1
        if workers != self.readers:
            raise RuntimeError(f"ShardStream was built for {self.readers} reader(s) per process but runs in {workers}")
        # Resume: which worker would have come next, and how far each had got.
        taken, next_worker = round_robin_position(self.reader_batches(self.epoch)[self.rank], self.skip)
        worker = ((info.id if info else 0) + next_worker) % self.readers
        slot = self.slot(self.rank, worker)
        paths = [self.shards[j] for j in self.dealt(self.epoch)[slot]]
        rng = random.Random(f"{self.seed}:{self.epoch}:{slot}")
        samples = _shuffled(read_samples(paths), self.shuffle_buffer, rng)
        for sample in itertools.islice(samples, taken[worker] * self.batch_size, None):
            try:
                conv = decode_sample(sample)
            except DataError as e:  # a corrupt image member (or record) costs one sample, not the run
                where = f"{sample.get('__url__', '')}:{sample.get('__key__', '')}"
                kind = "image" if "image" in e.reason else "record"
                yield self.renderer.skipped(where, _sample_id(sample), e.reason, str(e), kind)
                continue
            if self.text_only and conv.images:  # a bad record like any other: skipped, reported
                yield self.renderer.skipped(conv.source, conv.id, "image in text-only stage",
                                            f"{conv.where}: stage 'text' got a record with images", "record")
                continue
            yield self.renderer.sample(conv)
