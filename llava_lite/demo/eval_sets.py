"""Held-out evaluation sets made from the demo world's test split, besides the VQA questions.

POPE-style (object hallucination, yes/no): per test image and category, one present (colour,
shape) pair ("yes") and one absent pair ("no"), so the set is balanced and a model that always
says yes scores 50% accuracy and F1 0.67. Categories as in POPE: "random" draws the absent pair
from all absent pairs, "adversarial" from absent pairs sharing a colour or a shape with an object
that is there (the binding of colour to shape is what is tested).

Multiple choice by log-likelihood: per test image one text row (a caption, then a question about
it: the base LM's reading skill, so base and tuned can be compared) and one image row (the image,
then the question), with 2-4 options drawn from the answer's vocabulary.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

from data_tools.teachers.rule import SHORT_SUFFIX
from llava_lite.demo.captions import article
from llava_lite.demo.corpus import qa_pairs
from llava_lite.demo.world import COLORS, SHAPES, load_objects

POSITION_WORDS = (("left", "right"), ("top", "bottom"), ("small", "large"), ("yes", "no"))


def vqa_questions(world_dir: str | Path, seed: int = 0, n: int | None = None) -> list[tuple]:
    """The VQA test questions: the rule teacher's short-answer questions about each test image, in the world's
    vocabulary, as (scene with its captions, question) pairs; `n`: the first n images' only (the same questions).
    `demo/run.py` writes them for stage 2's evaluation; the LM's reading check (`demo/lm_pretrain.py`) asks them
    with captions in place of the image."""
    from data_tools.annotations import load_coco
    from data_tools.teachers.rule import grounded_qa

    notes, world = Path(world_dir) / "annotations", json.loads((Path(world_dir) / "world.json").read_text())
    rng = random.Random(seed)
    return [(s, qa) for s in load_coco(notes / "instances_test.json", notes / "captions_test.json")[:n]
            for qa in grounded_qa(s.objects, rng, short=True, shapes=world["shapes"], colors=list(world["colors"]))]


def _question(c: str, s: str) -> str:
    return f"Is there {article(c)} {c} {s} in the image?"


def pope_rows(world_dir: str | Path, seed: int = 0) -> list[dict]:
    images, objects = load_objects(world_dir, "test")
    rng = random.Random(seed)
    pairs = [(c, s) for c in COLORS for s in SHAPES]
    rows: list[dict] = []
    for im in images:
        present = sorted({(o["color"], o["shape"]) for o in objects[im["id"]]})
        absent = [p for p in pairs if p not in present]
        near = [p for p in absent if any(p[0] == q[0] or p[1] == q[1] for q in present)]
        for category, pool in (("random", absent), ("adversarial", near or absent)):
            for pair, answer in ((rng.choice(present), "yes"), (rng.choice(pool), "no")):
                rows.append({"question_id": len(rows), "image": im["file_name"], "text": _question(*pair),
                             "answer": answer, "category": category})
    return rows


def _options(answer: str, rng: random.Random) -> list[str] | None:
    """The answer and up to 3 distractors of the same kind, shuffled; None for free-text answers."""
    for vocab in (list(COLORS), list(SHAPES), [str(i) for i in range(7)], *map(list, POSITION_WORDS)):
        if answer in vocab:
            others = rng.sample([v for v in vocab if v != answer], min(3, len(vocab) - 1))
            options = [answer] + others
            rng.shuffle(options)
            return options
    return None


def choice_rows(world_dir: str | Path, seed: int = 0) -> list[dict]:
    world_dir = Path(world_dir)
    images, objects = load_objects(world_dir, "test")
    captions: dict[int, list[str]] = {}
    for a in json.loads((world_dir / "annotations" / "captions_test.json").read_text())["annotations"]:
        captions.setdefault(a["image_id"], []).append(a["caption"])
    rng = random.Random(seed)
    rows: list[dict] = []
    for im in images:
        qas = [(q, a, opts) for q, a in qa_pairs(objects[im["id"]], rng) if (opts := _options(a, rng))]
        if len(qas) < 2:
            continue
        (q1, a1, o1), (q2, a2, o2) = qas[:2]
        rows.append({"question": f"{rng.choice(captions[im['id']])}\n{q1}", "choices": o1, "answer": a1,
                     "kind": "text"})
        rows.append({"question": q2 + SHORT_SUFFIX, "choices": o2, "answer": a2, "image": im["file_name"],
                     "kind": "image"})
    return rows


def write_sets(data_dir: Path, world_dir: Path, seed: int = 0) -> dict[str, Path]:
    paths = {"pope": data_dir / "pope_test.jsonl", "choice": data_dir / "choice_test.jsonl"}
    for key, rows in (("pope", pope_rows(world_dir, seed)), ("choice", choice_rows(world_dir, seed))):
        paths[key].write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths
