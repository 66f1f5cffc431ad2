"""Shard streams (llava_lite.data.streaming): the same rendered samples as the JSON path, disjoint and
complete splits over processes and DataLoader workers, seeded shuffling, exact mid-epoch resume."""
from __future__ import annotations

import collections
import io
import json
import tarfile

import pytest
import torch
from helpers.tiny import make_llava_data
from torch.utils.data import DataLoader

from data_tools.shards import write_shards
from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.data.conversation import DataError
from llava_lite.data.dataset import ConversationDataset
from llava_lite.data.readers import read_conversations
from llava_lite.data.streaming import (
    ShardStream,
    count_samples,
    decode_sample,
    expand_shards,
    iter_shard_conversations,
    read_samples,
    round_robin_position,
)
from llava_lite.model.llava import LlavaLite


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    paths = make_llava_data(root, n=12)  # conversations: 12 with an image + 6 text-only
    shards = write_shards(paths["conversations"], root / "shards", root / "images", maxcount=3)
    return {"json": paths["conversations"], "images": root / "images", "shards": [str(s) for s in shards], "root": root}


class Ids:
    """A stand-in renderer: the stream hands it each conversation; it returns the record id."""

    def sample(self, conv):
        return conv.id


def test_shard_lists_and_counts(data):
    assert len(data["shards"]) == 6
    root = data["root"] / "shards"
    assert expand_shards(str(root / "shard-{000000..000005}.tar")) == data["shards"]
    assert expand_shards(str(root / "shard-*.tar")) == data["shards"]
    assert expand_shards([data["shards"][1], str(root / "shard-00000[45].tar")]) == [data["shards"][i]
                                                                                     for i in (1, 4, 5)]
    with pytest.raises(DataError, match=r"2 shard file\(s\) missing, first: .*shard-000008\.tar"):
        expand_shards(str(root / "shard-{000008..000009}.tar"))
    with pytest.raises(DataError, match="no shard matches"):
        expand_shards(str(root / "nope-*.tar"))
    assert [count_samples(s) for s in data["shards"]] == [3] * 6


def test_stream_renders_the_same_samples_as_the_json_path(data, tiny_lm):
    torch.manual_seed(0)
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm)))

    def dataset(convs):
        return ConversationDataset(convs, model.tokenizer, model.vision.image_to_pixels,
                                   image_token_id=model.image_token_id,
                                   image_seq_len=model.image_seq_len, max_length=128)

    def key(s):
        pixels = None if s.pixel_values is None else s.pixel_values.numpy().tobytes()
        return tuple(s.input_ids.tolist()), tuple(s.labels.tolist()), pixels

    ref = dataset(read_conversations(data["json"], image_folder=data["images"]))
    stream = ShardStream(data["shards"], dataset([]), batch_size=4, seed=3, shuffle_buffer=5)
    got = [s for s in stream]
    assert len(got) == len(ref) == 18
    assert sum(s.pixel_values is not None for s in got) == 12
    assert collections.Counter(map(key, got)) == collections.Counter(key(ref[i]) for i in range(len(ref)))
    # An uninterrupted epoch, shuffled: not the file order, but the same again for the same (seed, epoch).
    assert [key(s) for s in got] != [key(ref[i]) for i in range(len(ref))]
    assert [key(s) for s in stream] == [key(s) for s in got]


def _loader_items(stream, epoch, skip=0, workers=2):
    stream.set_epoch(epoch, skip)
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers, collate_fn=list)
    return list(loader)


def test_two_ranks_by_two_workers_read_disjoint_shards_covering_everything(data):
    seen = {}
    for rank in (0, 1):
        stream = ShardStream(data["shards"], Ids(), batch_size=2, seed=0, shuffle_buffer=4, rank=rank, world_size=2,
                             num_workers=2)
        batches = _loader_items(stream, epoch=0)
        assert len(batches) == sum(stream.reader_batches(0)[rank])  # the plan matches what the loader yields
        seen[rank] = [i for b in batches for i in b]
    every = [c.id for c in read_conversations(data["json"], image_folder=data["images"])]
    assert sorted(seen[0] + seen[1]) == sorted(every)  # each sample exactly once over 2 x 2 readers
    assert not set(seen[0]) & set(seen[1]) and seen[0] and seen[1]
    # each shard went to exactly one reader: per shard, all its ids are on one rank
    for shard in data["shards"]:
        ids = {json.loads(tarfile.open(shard).extractfile(m).read())["id"] for m in tarfile.open(shard).getmembers()
               if m.name.endswith(".json")}
        assert ids <= set(seen[0]) or ids <= set(seen[1])
    # a new epoch deals the shards afresh
    stream = ShardStream(data["shards"], Ids(), batch_size=2, seed=0, shuffle_buffer=4, rank=0, world_size=2,
                         num_workers=2)
    assert stream.dealt(1) != stream.dealt(0)


def test_iter_shard_conversations_splits_by_node(data, monkeypatch):
    parts = []
    for rank in (0, 1, 2):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        parts.append([c.id for c in iter_shard_conversations(data["shards"])])
    assert all(len(p) == 6 for p in parts)
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    whole = [c.id for c in iter_shard_conversations(data["shards"])]  # unshuffled: the file order
    assert whole == [c.id for c in read_conversations(data["json"], image_folder=data["images"])]
    assert sorted(parts[0] + parts[1] + parts[2]) == sorted(whole)


def test_round_robin_position():
    # Three workers with 2, 0 and 3 batches: order w0 w2 w0 w2 w2 (w1 is skipped every round).
    assert round_robin_position([2, 0, 3], 0) == ([0, 0, 0], 0)
    assert round_robin_position([2, 0, 3], 1) == ([1, 0, 0], 1)
    assert round_robin_position([2, 0, 3], 3) == ([2, 0, 1], 1)
    assert round_robin_position([2, 0, 3], 4) == ([2, 0, 2], 0)
    assert round_robin_position([2, 0, 3], 5) == ([2, 0, 3], 0)
    with pytest.raises(ValueError, match="cannot skip 6"):
        round_robin_position([2, 0, 3], 6)


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_continues_with_the_same_batches(data, workers):
    """Skipping k batches gives exactly the rest of the uninterrupted epoch, with workers that
    run out at different times (shards hold 3 samples, batches 2: every reader ends on a half batch)."""
    shards = data["shards"][:5]  # 5 shards over 2 workers: unequal readers
    stream = ShardStream(shards, Ids(), batch_size=2, seed=1, shuffle_buffer=3, num_workers=workers)
    full = _loader_items(stream, epoch=2, workers=workers)
    assert len(full) == stream.epoch_batches(2) == 8  # 15 samples: 9 + 6 over two readers, or 15 in one
    for k in (1, 3, 4, 7):
        assert _loader_items(stream, epoch=2, skip=k, workers=workers) == full[k:], k


def test_broken_samples_name_the_shard_and_key(tmp_path):
    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "000000001.json", json.dumps({"id": "r1", "image_keys": ["png"], "conversations": [
            {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]}).encode())
        add(tar, "000000001.png", b"not a png")
        add(tar, "000000002.json",
            json.dumps({"id": "r2", "conversations": [{"from": "robot", "value": "x"}]}).encode())
        add(tar, "000000003.txt", b"no json")
    samples = list(read_samples([str(path)]))
    assert count_samples(str(path)) == len(samples) == 3
    with pytest.raises(DataError, match=r"bad\.tar:000000001: cannot read image member 'png'"):
        decode_sample(samples[0])
    with pytest.raises(DataError,
                       match=r"bad\.tar:000000002 \(id='r2'\): "
                             r"field 'conversations\[0\]\.from' has unknown role 'robot'"):
        decode_sample(samples[1])
    with pytest.raises(DataError, match=r"bad\.tar:000000003: broken shard sample: no \.json member"):
        decode_sample(samples[2])
