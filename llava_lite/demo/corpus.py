"""World text for the tokenizer and the LM: captions, question/answer phrasing, text tasks.

Q&A here is reading comprehension: a caption states the scene and the questions are answered
from it, so the LM learns the phrasing of colours, shapes, counts and positions, and the skill
stage 2 needs (answer from a description; there the description is the image tokens). Every
answer is computed from the annotations. No text about a held-out (colour, shape) pair is ever
produced for pre-training: `assert_no_heldout` checks every document.
"""
from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

from data_tools.teachers.rule import SHORT_SUFFIX  # the same VQA prompt as the stage-2 data
from llava_lite.demo.captions import article, cap, join, noun, position_phrase
from llava_lite.demo.world import COLORS, HELDOUT_PAIRS, SHAPES, load_objects

CORPUS_VERSION = 2  # part of the LM cache key: a change to the documents retrains the LM
CHAT_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"  # the tokenizer's chat template, as a string


def chatml(messages: list[dict[str, str]]) -> str:
    return "".join(CHAT_TURN.format(role=m["role"], content=m["content"]) for m in messages)


def dialogue(context: str, turns: list[tuple[str, str]]) -> str:
    """A ChatML dialogue about one text: `context` opens the first question, then each (question, answer)."""
    msgs = []
    for i, (q, a) in enumerate(turns):
        msgs += [{"role": "user", "content": f"{context}\n{q}" if i == 0 else q}, {"role": "assistant", "content": a}]
    return chatml(msgs)


def plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def qa_pairs(objs: list[dict], rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs about one image, every answer computed from `objs`."""
    out: list[tuple[str, str]] = []
    shapes, colors = Counter(o["shape"] for o in objs), Counter(o["color"] for o in objs)
    color_word = rng.choice(["color", "colour"])
    for o in objs:
        if shapes[o["shape"]] == 1:
            out.append((f"What {color_word} is the {o['shape']}?", o["color"]))
        if colors[o["color"]] == 1:
            out.append((f"What shape is the {o['color']} object?", o["shape"]))
        if sum((p["shape"], p["color"]) == (o["shape"], o["color"]) for p in objs) == 1:
            n = f"{o['color']} {o['shape']}"
            out.append((f"Where is the {n}?", position_phrase(o["position"])))
            out.append((f"Is the {n} small or large?", o["size"]))
            words = o["position"].split()  # "top left", "top", "left", "center", ...
            if words[-1] in ("left", "right"):
                out.append((f"Is the {n} on the left or right side of the image?", words[-1]))
            if words[0] in ("top", "bottom"):
                out.append((f"Is the {n} in the top or bottom half of the image?", words[0]))
        out.append((f"What is {position_phrase(o['position'])}?", noun(o)))
    s = rng.choice(SHAPES)
    out.append((f"How many {plural(s)} are there in the image?", str(shapes[s])))
    c = rng.choice(list(COLORS))
    out.append((f"How many {c} objects are there?", str(colors[c])))
    out.append(("How many objects are there in the image?", str(len(objs))))
    present = {(o["color"], o["shape"]) for o in objs}
    yes = rng.choice(sorted(present))
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present and (c, s) not in HELDOUT_PAIRS]
    no = rng.choice(absent)
    out.append((f"Is there {article(yes[0])} {yes[0]} {yes[1]} in the image?", "yes"))
    out.append((f"Is there {article(no[0])} {no[0]} {no[1]} in the image?", "no"))
    rng.shuffle(out)
    return out


def image_document(objs: list[dict], captions: list[str], rng: random.Random) -> str:
    """One pre-training document about one image: its captions, or a caption followed by many
    questions about it (plain Q&A or a ChatML dialogue). The many questions per caption matter:
    a tiny LM learns to look answers up in its context only from dense examples of it."""
    caption = rng.choice(captions)
    qas = qa_pairs(objs, rng)[: rng.randint(4, 10)]
    kind = rng.random()
    if kind < 0.1:
        return " ".join(captions)
    if kind < 0.5:
        return caption + "\n" + "\n".join(f"Q: {q}\nA: {a}" for q, a in qas)
    short = rng.random() < 0.5
    if short:
        return dialogue(caption, [(q + SHORT_SUFFIX, a) for q, a in qas])
    sentence = [a[:1].isalpha() and rng.random() < 0.5 for _, a in qas]  # "Red." for "red", at random
    return dialogue(caption, [(q, a[:1].upper() + a[1:] + "." if s else a) for (q, a), s in zip(qas, sentence)])


def assert_train_clean(images: list[dict], objects: dict[int, list[dict]]) -> None:
    """Raise if a train image holds a held-out (colour, shape) pair or is flagged unseen."""
    for im in images:
        bad = [(o["color"], o["shape"]) for o in objects[im["id"]] if (o["color"], o["shape"]) in HELDOUT_PAIRS]
        if bad or im.get("unseen_combo"):
            raise AssertionError(f"held-out pair {bad} in train image {im['file_name']}")


def world_documents(world_dir: str | Path, split: str, seed: int = 0) -> list[str]:
    """One document per image of `split` (for "train", checked free of held-out pairs)."""
    world_dir = Path(world_dir)
    images, objects = load_objects(world_dir, split)
    if split == "train":
        assert_train_clean(images, objects)
    caps: dict[int, list[str]] = {}
    for a in json.loads((world_dir / "annotations" / f"captions_{split}.json").read_text())["annotations"]:
        caps.setdefault(a["image_id"], []).append(a["caption"])
    rng = random.Random(seed)
    return [image_document(objects[im["id"]], caps[im["id"]], rng) for im in images]


def lookup_documents(world_dir: str | Path, per_image: int, seed: int = 0) -> list[str]:
    """Short in-context lookup documents, `per_image` per train image: two or three of its objects named in one
    sentence, then one to three questions about them in stage 2's short-answer format, each answer computed from
    the objects named. The lookup curriculum (`lm.lookup` in presets.py, demo/lm_pretrain.py) trains on these
    first: a tiny LM learns to answer from its context on them alone, not within the world's longer text."""
    images, objects = load_objects(Path(world_dir), "train")
    assert_train_clean(images, objects)
    rng, out = random.Random(seed + 7), []
    for im in images:
        objs = objects[im["id"]]
        for _ in range(per_image):
            named = rng.sample(objs, min(len(objs), rng.randint(2, 3)))
            sentence = cap(join([noun(o) for o in named])) + "."
            turns = qa_pairs(named, rng)[: rng.randint(1, 3)]
            out.append(dialogue(sentence, [(q + SHORT_SUFFIX, a) for q, a in turns]))
    return out


def text_task_documents(world_dir: str | Path, split: str) -> list[str]:
    rows = json.loads((Path(world_dir) / "text_tasks" / f"{split}.json").read_text())
    return [chatml([{"role": "user", "content": r["instruction"] + (f"\n{r['input']}" if r["input"] else "")},
                    {"role": "assistant", "content": r["output"]}]) for r in rows]


def vocabulary_text() -> list[str]:
    """A broad sample of the world's words, so each gets a token even if rare in the data."""
    words = list(COLORS) + list(SHAPES) + [plural(s) for s in SHAPES] + ["small", "large", "gray", "grey", "colour"]
    lines = [" ".join(words), " ".join(str(i) for i in range(101)), " ".join(w.capitalize() for w in words)]
    lines += [f"{position_phrase(p)}" for p in ("top left", "top", "top right", "left", "center", "right",
                                                 "bottom left", "bottom", "bottom right")]
    return lines


def _heldout_patterns() -> list[re.Pattern]:
    pats = []
    for c, s in HELDOUT_PAIRS:
        pats.append(re.compile(rf"\b{c}\s+(?:(?:small|large)\s+)?{s}(?:s|es)?\b", re.I))
        pats.append(re.compile(rf"\b{s}(?:s|es)?\s+(?:is|are)\s+{c}\b", re.I))
    return pats


def assert_no_heldout(texts: list[str], what: str) -> None:
    """Raise if any text names a held-out (colour, shape) pair."""
    pats = _heldout_patterns()
    for i, t in enumerate(texts):
        for p in pats:
            m = p.search(t)
            if m:
                raise AssertionError(f"{what}[{i}] mentions held-out pair {m.group(0)!r}: {t[:200]!r}")
