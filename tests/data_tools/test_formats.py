"""Conversion round trips between the four formats, validation reports, webdataset shards."""
from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest
import torch
from helpers.world import make_world
from PIL import Image

from data_tools.cli import main
from data_tools.convert import convert, validate
from data_tools.formats import FORMATS, to_openai, write_conversations
from data_tools.shards import iter_shard_conversations, write_shards
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.readers import read_conversations


def _png(path, color):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), color).save(path)


def _hand_written(root):
    """A small hand-written LLaVA set: single image, two images, text only, a system prompt."""
    _png(root / "imgs" / "a.png", "red")
    _png(root / "imgs" / "b.png", "blue")
    records = [
        {"id": "one", "image": "a.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "two", "image": ["a.png", "b.png"], "conversations": [
            {"from": "human", "value": "<image>\n<image>\nCompare them."},
                                                                     {"from": "gpt", "value": "Red, then blue."}]},
        {"id": "text", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi."}]},
        {"id": "sys", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "2+2?"},
                                        {"from": "gpt", "value": "4"}]},
    ]
    path = root / "hand.json"
    path.write_text(json.dumps(records, indent=1))
    return path


def _key(conv):
    return ([(m.role, m.content) for m in conv.messages], [str(i) for i in conv.images], conv.id)


@pytest.mark.parametrize("fmt", ["llava", "sharegpt", "openai"])
def test_round_trip_through_each_format(tmp_path, fmt):
    src = _hand_written(tmp_path)
    before = read_conversations(src, image_folder=tmp_path / "imgs")
    dst = tmp_path / f"out.{fmt}.jsonl"
    stats = convert(src, dst, fmt, image_folder=tmp_path / "imgs")
    assert stats["written"] == 4 and not stats["bad"] and not stats["skipped"]
    after = read_conversations(dst, fmt, image_folder=tmp_path / "imgs")
    assert [_key(c) for c in after] == [_key(c) for c in before]
    back = tmp_path / "back.json"
    convert(dst, back, "llava", fmt, image_folder=tmp_path / "imgs")
    assert json.loads(back.read_text()) == json.loads(src.read_text())


def test_alpaca_holds_only_single_text_exchanges(tmp_path):
    src = _hand_written(tmp_path)
    dst = tmp_path / "alpaca.json"
    stats = convert(src, dst, "alpaca", image_folder=tmp_path / "imgs")
    assert stats["written"] == 1 and len(stats["skipped"]) == 3  # reported, never silently lost
    assert json.loads(dst.read_text()) == [{"id": "text", "instruction": "Say hi.", "input": "", "output": "Hi."}]
    again = read_conversations(dst)
    assert [(m.role, m.content) for m in again[0].messages] == [("user", "Say hi."), ("assistant", "Hi.")]


def test_openai_image_parts_sit_where_the_placeholders_were(tmp_path):
    conv = Conversation([Message("user", "Look <image>\nand <image>\ncompare"), Message("assistant", "ok")],
                        ["/x/a.png", "/x/b.png"])
    parts = to_openai(conv, "/x")["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[1]["image_url"]["url"] == "a.png"
    p = tmp_path / "o.jsonl"
    write_conversations([conv], p, "openai", "/x")
    assert read_conversations(p, image_folder="/x")[0].messages[0].content == "Look \n<image>\nand \n<image>\ncompare"


def test_validate_names_file_line_and_reason(tmp_path):
    _png(tmp_path / "ok.png", "red")
    records = [
        {"id": "good", "image": "ok.png",
         "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
        {"id": "missing", "image": "nope.png",
         "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}]},
        {"id": "count", "image": "ok.png",
         "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {"id": "empty", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},
        {"id": "role", "conversations": [{"from": "robot", "value": "q"}, {"from": "gpt", "value": "a"}]},
    ]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records, indent=1))
    good, problems = validate(path)
    assert good == 1 and [p.record for p in problems] == [1, 2, 3, 4]
    lines = path.read_text().splitlines()
    for p, rid in zip(problems, ["missing", "count", "empty", "role"]):
        assert p.file == str(path) and lines[p.line - 1].strip() == "{" and f'"id": "{rid}"' in lines[p.line]
    reasons = [p.reason for p in problems]
    assert "missing image file" in reasons[0] and "placeholder" in reasons[1]
    assert "empty" in reasons[2] and "unknown role 'robot'" in reasons[3]
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert [p.line for p in validate(jsonl)[1]] == [2, 3, 4, 5]


def test_validate_and_convert_cli(tmp_path, capsys):
    src = _hand_written(tmp_path)
    assert main(["validate", str(src), "--image-folder", str(tmp_path / "imgs")]) == 0
    assert main(["validate", str(src)]) == 1  # images are not next to the file
    assert "missing image file" in capsys.readouterr().out
    assert main(["convert", str(src), str(tmp_path / "s.json"), "--to", "sharegpt", "--image-folder",
                 str(tmp_path / "imgs")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())[3]["system"] == "Be brief."


def _pixels(img):
    return np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else Image.open(img).convert("RGB"))


def test_shards_give_the_same_samples_as_the_json_path(tmp_path):
    src = _hand_written(tmp_path)
    Image.new("RGB", (16, 16), (10, 200, 30)).save(tmp_path / "imgs" / "c.jpg", quality=70)
    records = json.loads(src.read_text()) + [{"id": "jpg", "image": "c.jpg", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Green."}]}]
    src.write_text(json.dumps(records))
    shards = write_shards(src, tmp_path / "shards", tmp_path / "imgs", maxsize=50)
    assert len(shards) == 5  # every sample is over the tiny maxsize: one shard each
    members = [n for s in shards for n in tarfile.open(s).getnames()]
    assert any(n.endswith(".0.png") for n in members) and any(n.endswith(".1.png") for n in members)
    jpg = next(n for n in members if n.endswith(".jpg"))
    with tarfile.open(next(s for s in shards if jpg in tarfile.open(s).getnames())) as tar:
        assert tar.extractfile(jpg).read() == (tmp_path / "imgs" / "c.jpg").read_bytes()  # stored as is
    ref = read_conversations(src, image_folder=tmp_path / "imgs")
    got = list(iter_shard_conversations([str(s) for s in shards]))
    assert [c.id for c in got] == [c.id for c in ref]
    for a, b in zip(got, ref):
        assert [(m.role, m.content) for m in a.messages] == [(m.role, m.content) for m in b.messages]
        assert len(a.images) == len(b.images)
        for ia, ib in zip(a.images, b.images):
            assert isinstance(ia, Image.Image) and np.array_equal(_pixels(ia), _pixels(ib))
    shuffled = [c.id for c in iter_shard_conversations([str(s) for s in shards], shuffle_buffer=10, seed=1)]
    assert sorted(shuffled) == sorted(c.id for c in ref)
    assert shuffled == [c.id for c in iter_shard_conversations([str(s) for s in shards], shuffle_buffer=10, seed=1)]


def test_shards_cli_on_generated_world(tmp_path):
    root = make_world(tmp_path / "world", n_images=5)
    gen = tmp_path / "gen.json"
    assert main(["generate", "--annotations", str(root / "instances_train.json"), "--out", str(gen), "--kinds",
                 "detail"]) == 0
    assert main(["shards", str(gen), str(tmp_path / "sh"), "--image-folder", str(root), "--maxsize", "2KB"]) == 0
    shards = sorted((tmp_path / "sh").glob("*.tar"))
    assert len(shards) > 1
    assert len(list(iter_shard_conversations([str(s) for s in shards]))) == 5


def test_every_format_is_known_to_the_reader():
    from llava_lite.data.readers import FORMATS as READ

    assert set(FORMATS) == set(READ)


class _ShardStream(torch.utils.data.IterableDataset):
    """How a training loop wraps the stream: each DataLoader worker reads its own shards."""

    def __init__(self, urls):
        self.urls = urls

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        for conv in iter_shard_conversations(self.urls):
            yield (conv.id, info.id)


def test_dataloader_workers_split_the_shards(tmp_path):
    src = _hand_written(tmp_path)
    shards = [str(s) for s in write_shards(src, tmp_path / "shards", tmp_path / "imgs", maxsize=50)]
    loader = torch.utils.data.DataLoader(_ShardStream(shards), num_workers=2, batch_size=None)
    seen = list(loader)
    assert sorted(i for i, _ in seen) == ["one", "sys", "text", "two"]  # each sample once
    assert {w for _, w in seen} == {0, 1}


def test_add_parser_mounts_data_commands_on_another_cli(tmp_path):
    import argparse

    from data_tools.cli import add_parser

    parser = argparse.ArgumentParser(prog="llava-lite")
    add_parser(parser.add_subparsers(dest="command"))
    src = _hand_written(tmp_path)
    args = parser.parse_args(["data", "validate", str(src), "--image-folder", str(tmp_path / "imgs")])
    assert args.func(args) == 0
    args = parser.parse_args(["data", "validate", str(src)])  # missing images: the process must fail
    with pytest.raises(SystemExit) as e:
        args.func(args)
    assert e.value.code == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "generate", "--help"])
