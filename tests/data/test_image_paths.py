"""Images stay inside their folder (`..`, absolute paths, outward symlinks are bad records), and
`data validate --check-images` decodes every image through the training code path."""
from __future__ import annotations

import io
import json
import os

import pytest
import torch
from helpers.hostile import BAD, GOOD, make_hostile
from helpers.tiny import make_tokenizer
from PIL import Image

from data_tools.convert import validate
from data_tools.shards import write_shards
from llava_lite.cli import main
from llava_lite.config import load_config
from llava_lite.data.conversation import DataError
from llava_lite.data.dataset import Collator, ConversationDataset, batch_rejects
from llava_lite.data.images import resolve_image
from llava_lite.data.loader import TrainData
from llava_lite.data.readers import read_conversations
from llava_lite.data.streaming import ShardStream

ESCAPES = "path escapes image folder"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return make_hostile(tmp_path_factory.mktemp("hostile"))


def test_resolve_image_confines_paths(tmp_path):
    folder, outside = tmp_path / "imgs", tmp_path / "secret.png"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(folder / "a.png")
    Image.new("RGB", (4, 4)).save(outside)
    os.symlink(outside, folder / "out.png")
    os.symlink(folder / "a.png", folder / "sub" / "in.png")
    os.symlink(tmp_path, folder / "up")
    assert resolve_image(folder, "a.png") == str(folder / "a.png")
    assert resolve_image(folder, "sub/../a.png") == str(folder / "sub/../a.png")  # stays inside
    assert resolve_image(folder, "sub/in.png") == str(folder / "sub/in.png")  # a symlink to inside is fine
    assert resolve_image(folder, "missing.png") == str(folder / "missing.png")  # existence is checked later
    for ref in ("../secret.png", "sub/../../secret.png", str(outside), "out.png", "up/secret.png", "~/x.png",
                "../../../../etc/passwd"):
        with pytest.raises(DataError, match="image folder") as e:
            resolve_image(folder, ref, where="f.json:3")
        assert e.value.reason == ESCAPES and str(e.value).startswith("f.json:3: image path")
    assert resolve_image(folder, str(outside), allow_absolute=True) == str(outside)
    assert resolve_image(folder, "../secret.png", allow_absolute=True) == str(folder / "../secret.png")


def test_escaping_records_are_rejected_when_read(hostile):
    good, bad = read_conversations(hostile["data"], image_folder=hostile["images"], errors="collect")
    reasons = {b.id: b.reason for b in bad}
    assert reasons["dotdot"] == reasons["absolute"] == ESCAPES
    assert all(str(hostile["outside"]) not in str(c.images) for c in good)
    good, bad = read_conversations(hostile["data"], image_folder=hostile["images"], errors="collect",
                                   allow_absolute_images=True)
    assert {"dotdot", "absolute"} <= {c.id for c in good} and not {"dotdot", "absolute"} & {b.id for b in bad}
    with pytest.raises(DataError, match="twoplaceholders"):  # errors="raise" still stops at the first
        read_conversations(hostile["data"], image_folder=hostile["images"])


def test_training_config_switch(hostile, tmp_path):
    source = f"data.sources=[{{path: {hostile['data']}, image_folder: {hostile['images']}}}]"
    for allow, n_bad in (("false", 8), ("true", 6)):
        cfg = load_config(None, [source, "data.on_bad_record=skip", "data.max_bad_fraction=1",
                                 f"data.allow_absolute_image_paths={allow}"])
        data = TrainData(cfg.data, batch_size=4, seed=0, mode="chat", images=True)
        assert len(data.rejects.structural) == n_bad
        assert ({r.id for r in data.rejects.structural} >= {"dotdot", "absolute"}) == (allow == "false")


def test_shard_writing_refuses_escaping_paths(hostile, tmp_path):
    recs = json.loads(hostile["data"].read_text())
    esc = tmp_path / "esc.json"
    esc.write_text(json.dumps([r for r in recs if r["id"] in ("img0", "dotdot")]))
    with pytest.raises(DataError, match="dotdot.*outside the image folder") as e:
        write_shards(esc, tmp_path / "shards", hostile["images"])
    assert e.value.reason == ESCAPES


def test_validate_check_images_reports_per_reason(hostile, capsys, tmp_path):
    good, problems = validate(hostile["data"], image_folder=hostile["images"], decode_images=True)
    assert good == len(GOOD)
    by_id = {json.loads(hostile["data"].read_text())[p.record]["id"]: p.kind for p in problems}
    assert by_id == BAD
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", str(hostile["data"]), "--image-folder", str(hostile["images"]), "--check-images"])
    assert e.value.code == 1
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 12 and "empty.jpg" in out.out
    assert out.err.strip().splitlines()[-1].startswith("14 good record(s), 12 bad (3 unreadable image, 2 path escapes")
    # without --check-images the images are only checked to exist: the three unreadable ones pass
    assert validate(hostile["data"], image_folder=hostile["images"])[0] == len(GOOD) + 3
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", str(empty)])
    assert e.value.code == 1 and "the file holds no records" in capsys.readouterr().out


def test_corrupt_image_in_a_shard_is_skipped_not_fatal(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(images / "ok.png")
    buf = io.BytesIO()
    Image.new("RGB", (32, 32)).save(buf, format="PNG")
    (images / "cut.png").write_bytes(buf.getvalue()[:40])  # a truncated PNG: exists, so it is written
    recs = [{"id": name, "image": f"{name}.png", "conversations": [
        {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Red."}]} for name in ("ok", "cut")]
    (tmp_path / "c.json").write_text(json.dumps(recs))
    shards = write_shards(tmp_path / "c.json", tmp_path / "shards", images)
    tok = make_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    ds = ConversationDataset(
        [],
        tok,
        lambda im: torch.zeros(1, 3, 4, 4),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        image_seq_len=2,
        max_length=64,
    )
    stream = ShardStream([str(p) for p in shards], ds, batch_size=2, shuffle_buffer=0)
    samples = list(stream)
    assert [s.skipped for s in samples] == [False, True]
    batch = Collator(tok.pad_token_id)(samples)
    (reject,) = batch_rejects(batch)
    assert batch["num_skipped"] == 1 and batch["input_ids"].shape[0] == 1
    assert reject.id == "cut" and reject.reason == "unreadable image" and reject.kind == "image"
