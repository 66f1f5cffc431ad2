"""The demo's synthetic world, text tasks and tokenizer: deterministic, consistent, exact."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.teachers.rule import SHORT_SUFFIX
from llava_lite.demo.corpus import assert_no_heldout, chatml, lookup_documents, text_task_documents, world_documents
from llava_lite.demo.text_tasks import make_text_tasks, write_text_tasks
from llava_lite.demo.tokenizer import load_tokenizer, train_tokenizer
from llava_lite.demo.world import COLORS, HELDOUT_PAIRS, SHAPES, cell_of, make_world, position_name

PRESET = {"seed": 0, "tokenizer": {"vocab_size": 600}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    make_world(out, n_train=24, n_test=12, seed=3, workers=1)
    write_text_tasks(out, n_train=40, n_test=10, seed=3)
    return out


def _digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def _load(world: Path, split: str):
    inst = json.loads((world / "annotations" / f"instances_{split}.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    objs = {im["id"]: [] for im in inst["images"]}
    for a in inst["annotations"]:
        objs[a["image_id"]].append({**a, "shape": names[a["category_id"]]})
    return inst, objs


def test_world_is_deterministic_per_seed(world, tmp_path):
    make_world(tmp_path / "a", n_train=24, n_test=12, seed=3, workers=1)
    write_text_tasks(tmp_path / "a", n_train=40, n_test=10, seed=3)
    assert _digest(tmp_path / "a") == _digest(world)
    make_world(tmp_path / "b", n_train=24, n_test=12, seed=4, workers=1)
    assert _digest(tmp_path / "b" / "images") != _digest(world / "images")


def test_world_does_not_depend_on_worker_count(tmp_path):
    make_world(tmp_path / "one", n_train=130, n_test=2, seed=5, workers=1)
    make_world(tmp_path / "two", n_train=130, n_test=2, seed=5, workers=2)  # the process-pool path
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")


def test_layout_and_world_json(world):
    meta = json.loads((world / "world.json").read_text())
    assert meta["seed"] == 3 and len(meta["shapes"]) >= 5 and len(meta["colors"]) >= 6
    assert meta["counts"]["train"]["images"] == 24 and meta["counts"]["test"]["images"] == 12
    for split in ("train", "test"):
        inst, objs = _load(world, split)
        for im in inst["images"]:
            img = Image.open(world / "images" / im["file_name"])
            assert img.mode == "RGB" and img.size == (im["width"], im["height"]) == (64, 64)
            assert 1 <= len(objs[im["id"]]) <= 4
        stage1 = json.loads((world / f"captions_{split}.json").read_text())
        assert len(stage1) == len(inst["images"])
        for rec in stage1:
            assert (world / "images" / rec["image"]).is_file()
            human, gpt = rec["conversations"]
            assert human["from"] == "human" and human["value"].startswith("<image>\n") and gpt["from"] == "gpt"
        caps = json.loads((world / "annotations" / f"captions_{split}.json").read_text())
        per_image = np.bincount([a["image_id"] for a in caps["annotations"]])[1:]
        assert per_image.min() >= 3 and per_image.max() <= 5


def test_annotations_agree_with_pixels(world):
    palette = {k: np.array(v, dtype=float) for k, v in COLORS.items()}
    for split in ("train", "test"):
        inst, objs = _load(world, split)
        for im in inst["images"]:
            px = np.asarray(Image.open(world / "images" / im["file_name"]), dtype=float)
            covered = np.zeros(px.shape[:2], bool)
            boxes = []
            for o in objs[im["id"]]:
                x, y, w, h = o["bbox"]
                centre = px[y + h // 2, x + w // 2]  # every shape is filled at its box centre
                assert min(palette, key=lambda k: np.abs(palette[k] - centre).sum()) == o["color"]
                assert w == h == {"small": 16, "large": 24}[o["size"]] and x % 8 == 0 and y % 8 == 0
                assert position_name(*cell_of(o["bbox"], 64)) == o["position"]
                covered[y:y + h, x:x + w] = True
                boxes.append((x, y, x + w, y + h))
            bg = px[~covered]  # outside every box: gray (low saturation)
            assert (bg.max(1) - bg.min(1)).max() < 40
            for i, a in enumerate(boxes):  # boxes do not overlap
                for b in boxes[i + 1:]:
                    assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_heldout_pairs_and_unseen_flag(world):
    inst, objs = _load(world, "train")
    assert all((o["color"], o["shape"]) not in HELDOUT_PAIRS for v in objs.values() for o in v)
    assert not any(im["unseen_combo"] for im in inst["images"])
    inst, objs = _load(world, "test")
    for im in inst["images"]:
        assert im["unseen_combo"] == any((o["color"], o["shape"]) in HELDOUT_PAIRS for o in objs[im["id"]])
    assert 0 < sum(im["unseen_combo"] for im in inst["images"]) < len(inst["images"])
    assert {c for c, _ in HELDOUT_PAIRS} == set(COLORS) and {s for _, s in HELDOUT_PAIRS} == set(SHAPES)
    meta = json.loads((world / "world.json").read_text())
    assert sorted(map(tuple, meta["heldout_pairs"])) == sorted(HELDOUT_PAIRS)


def test_captions_mention_only_existing_objects(world):
    mention = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
    for split in ("train", "test"):
        inst, objs = _load(world, split)
        caps = json.loads((world / "annotations" / f"captions_{split}.json").read_text())["annotations"]
        for a in caps:
            present = {(o["color"], o["shape"]) for o in objs[a["image_id"]]}
            said = set(mention.findall(a["caption"]))
            assert said <= present, a["caption"]
            assert said == present, a["caption"]  # and every object is named
            n = len(objs[a["image_id"]])
            assert len(mention.findall(a["caption"])) == n, a["caption"]


def test_text_tasks_are_exact(world):
    tasks = make_text_tasks(400, seed=1)
    assert tasks == make_text_tasks(400, seed=1) and len({t["instruction"] for t in tasks}) == 400
    assert {t["type"] for t in tasks} == {"arithmetic", "string", "list", "code"}
    for t in tasks:
        q, a = t["instruction"], t["output"]
        if m := re.search(r"(-?\d+) (\+|-|\*|plus|minus|times) (-?\d+)", q) if t["type"] == "arithmetic" else None:
            op = {"plus": "+", "minus": "-", "times": "*"}.get(m.group(2), m.group(2))
            assert a == str(eval(f"{m.group(1)} {op} {m.group(3)}"))
        elif t["type"] == "code":
            expr = re.search(r"`([^`]+)`|expression: (.+)$", q)
            value = eval(expr.group(1) or expr.group(2), {"__builtins__": {"len": len, "sum": sum, "max": max}})
            assert a == (repr(value) if isinstance(value, str) else str(value)), q
        elif t["type"] == "string":
            w = re.findall(r"'([a-z]+)'", q)[-1]
            if "Reverse" in q or "backwards" in q:
                assert a == w[::-1]
            elif "uppercase" in q or "capital" in q:
                assert a == w.upper()
            elif "times does the letter" in q:
                assert a == str(w.count(re.findall(r"'([a-z]+)'", q)[0]))
            elif "letters are in" in q or "length" in q:
                assert a == str(len(w))
            elif "first" in q or "start" in q:
                assert a == w[0]
            else:
                assert a == w[-1]
        else:
            xs = [int(v) for v in re.findall(r"\d+", q)]
            want = {"ascending": ", ".join(map(str, sorted(xs))),
                    "largest to smallest": ", ".join(map(str, sorted(xs, reverse=True))),
                    "largest number": str(max(xs)), "maximum": str(max(xs)), "smallest number": str(min(xs)),
                    "minimum": str(min(xs)), "How many items": str(len(xs))}
            assert a == next(v for k, v in want.items() if k in q), q
    train = json.loads((world / "text_tasks" / "train.json").read_text())
    test = json.loads((world / "text_tasks" / "test.json").read_text())
    assert len(train) == 40 and len(test) == 10 and set(train[0]) >= {"instruction", "input", "output"}
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in test}


def test_pretraining_text_has_no_heldout_pairs(world):
    docs = world_documents(world, "train") + text_task_documents(world, "train")
    assert_no_heldout(docs, "docs")
    with pytest.raises(AssertionError):
        c, s = HELDOUT_PAIRS[0]
        assert_no_heldout([f"There is a large {c} {s} at the top."], "probe")


def test_lookup_documents_are_answered_by_their_sentence(world):
    """The lookup curriculum's documents: per train image, a sentence naming two or three of its objects, then one
    to three short-answer questions whose colour and shape answers are read off that sentence."""
    docs = lookup_documents(world, 3, seed=0)
    assert docs == lookup_documents(world, 3, seed=0) != lookup_documents(world, 3, seed=1)
    assert len(docs) == 3 * 24
    assert_no_heldout(docs, "lookup documents")
    _, objs = _load(world, "train")
    images = json.loads((world / "annotations" / "instances_train.json").read_text())["images"]
    mention = re.compile(rf"\b({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
    turn = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>\n<\|im_start\|>assistant\n(.*?)<\|im_end\|>\n", re.S)
    checked = 0
    for k, doc in enumerate(docs):
        present = {(o["color"], o["shape"]) for o in objs[images[k // 3]["id"]]}
        turns = turn.findall(doc)
        messages = [{"role": r, "content": c} for q, a in turns for r, c in (("user", q), ("assistant", a))]
        assert chatml(messages) == doc and 1 <= len(turns) <= 3
        sentence = turns[0][0].split("\n")[0]
        named = mention.findall(sentence)
        assert set(named) <= present and min(2, len(present)) <= len(named) <= 3, sentence
        for q, a in turns:
            assert q.endswith(SHORT_SUFFIX) and "\n" not in a
            q = q.removesuffix(SHORT_SUFFIX).split("\n")[-1]
            if m := re.match(r"What colou?r is the (\w+)\?", q):
                assert [c for c, s in named if s == m.group(1)] == [a]
                checked += 1
            if m := re.match(r"What shape is the (\w+) object\?", q):
                assert [s for c, s in named if c == m.group(1)] == [a]
                checked += 1
    assert checked > 10


def test_tokenizer_round_trips_and_chat_template(world, tmp_path):
    info = train_tokenizer(world, tmp_path / "tok", PRESET)
    tok = load_tokenizer(tmp_path / "tok")
    assert len(tok) == info["vocab"]
    texts = ["A red circle at the top left.", "naïve café – 日本語 🤖 \t\n  x", "12 + 30 = 42", "<image>\nWhat?", ""]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text
    assert tok.convert_tokens_to_ids("<image>") != tok.unk_token_id and len(tok.tokenize("<image>")) == 1
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat shape?"},
            {"role": "assistant", "content": "A star."}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == chatml(msgs) == "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in msgs)
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == chatml(msgs[:2]) + "<|im_start|>assistant\n"
    ids = tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"]
    assert tok.decode(ids) == text
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    kept = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(kept) == "A star.<|im_end|>"
    parts = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "\nWhat shape?"}]}]
    assert tok.apply_chat_template(parts, tokenize=False) == chatml(msgs[1:2])
    again = train_tokenizer(world, tmp_path / "tok", PRESET)  # the marker makes the second call a no-op
    assert again == info
