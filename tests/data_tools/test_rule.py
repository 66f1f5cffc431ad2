"""The rule teacher: answers agree with the annotations, questions are unambiguous, yes/no is
balanced; annotation loading; generation end to end with the rule teacher; reply parsing."""
from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
from helpers.world import make_world, random_objects

from data_tools.annotations import load_coco, load_layout_text
from data_tools.cli import main
from data_tools.parse import ParseError, parse_description, parse_qa, parse_tags
from data_tools.teachers.rule import SHORT_SUFFIX, grounded_qa
from data_tools.teachers.rule_scene import describe, reasoning_qa
from data_tools.teachers.scene import CENTER_MARGIN, PAIR_MARGIN, area, center
from llava_lite.data.readers import read_conversations


def _matching(objs, phrase):
    """Objects a phrase like 'red circle' or 'circle' can refer to."""
    words = phrase.split()
    color, cat = (words[0], words[1]) if len(words) == 2 else (None, words[0])
    return [o for o in objs if o["category"] == cat and (color is None or o["color"] == color)]


def _the(objs, phrase):
    """The one object a definite description picks out; fails the test if ambiguous."""
    hits = _matching(objs, phrase)
    assert len(hits) == 1, f"'the {phrase}' matches {len(hits)} objects in {objs}"
    return hits[0]


def _check(objs, q, a):
    """Recompute the right answer from the annotations alone and compare."""
    q = q.removesuffix(SHORT_SUFFIX)
    if m := re.fullmatch(r"What color is the (\w+)\?", q):
        assert a == _the(objs, m[1])["color"]
    elif m := re.fullmatch(r"What shape is the (\w+) object\?", q):
        hits = [o for o in objs if o["color"] == m[1]]
        assert len(hits) == 1 and a == hits[0]["category"]
    elif q == "What shape is the object in the image?":
        assert len(objs) == 1 and a == objs[0]["category"]
    elif q == "How many objects are there in the image?":
        assert a == str(len(objs))
    elif m := re.fullmatch(r"How many (\w+) objects are there in the image\?", q):
        assert a == str(sum(o["color"] == m[1] for o in objs))
    elif m := re.fullmatch(r"How many (\w+) are there in the image\?", q):
        assert a == str(sum(m[1] in (o["category"] + "s", o["category"] + "es") for o in objs))
    elif m := re.fullmatch(r"Is the (.+) on the left or right side of the image\?", q):
        cx = center(_the(objs, m[1]))[0]
        assert abs(cx - 0.5) >= CENTER_MARGIN and a == ("left" if cx < 0.5 else "right")
    elif m := re.fullmatch(r"Is the (.+) in the top or bottom half of the image\?", q):
        cy = center(_the(objs, m[1]))[1]
        assert abs(cy - 0.5) >= CENTER_MARGIN and a == ("top" if cy < 0.5 else "bottom")
    elif m := re.fullmatch(r"Is the (.+) to the left or right of the (.+)\?", q):
        ax, bx = center(_the(objs, m[1]))[0], center(_the(objs, m[2]))[0]
        assert abs(ax - bx) >= PAIR_MARGIN and a == ("left" if ax < bx else "right")
    elif m := re.fullmatch(r"Is the (.+) above or below the (.+)\?", q):
        ay, by = center(_the(objs, m[1]))[1], center(_the(objs, m[2]))[1]
        assert abs(ay - by) >= PAIR_MARGIN and a == ("above" if ay < by else "below")
    elif m := re.fullmatch(r"Is there an? (.+) in the image\?", q):
        assert a == ("yes" if _matching(objs, m[1]) else "no")
    else:
        pytest.fail(f"unknown question template: {q!r}")


def test_short_answers_agree_with_annotations_over_many_scenes():
    rng = random.Random(0)
    types, yes_no = Counter(), Counter()
    for _ in range(600):
        objs = random_objects(rng, colored=rng.random() < 0.8)
        for qa in grounded_qa(objs, rng, short=True):
            assert qa["question"].endswith(SHORT_SUFFIX)
            assert len(qa["answer"].split()) == 1, qa
            _check(objs, qa["question"], qa["answer"])
            types[qa["type"]] += 1
            if qa["type"] == "exists":
                yes_no[qa["answer"]] += 1
    assert set(types) == {"color", "shape", "count", "position", "exists"}
    assert abs(yes_no["yes"] / sum(yes_no.values()) - 0.5) < 0.05


def test_long_answers_are_sentences_with_the_short_answer():
    rng = random.Random(1)
    for _ in range(200):
        objs = random_objects(rng)
        seed = rng.random()
        short = grounded_qa(objs, random.Random(seed), short=True)
        long = grounded_qa(objs, random.Random(seed), short=False)
        for s, l in zip(short, long):
            assert l["question"] + SHORT_SUFFIX == s["question"] and l["answer"].endswith(".")
            word = {"0": "no"}.get(s["answer"], s["answer"])
            assert word.lower() in l["answer"].lower(), (s, l)


def test_never_asks_colour_of_an_ambiguous_shape():
    objs = [{"category": "circle", "color": "red", "box": [0.0, 0.0, 0.2, 0.2]},
            {"category": "circle", "color": "blue", "box": [0.7, 0.7, 0.9, 0.9]}]
    for seed in range(50):
        for qa in grounded_qa(objs, random.Random(seed)):
            assert not qa["question"].startswith("What color is the circle")


def test_uncoloured_objects_are_just_shapes():
    objs = [{"category": "square", "color": None, "box": [0.05, 0.1, 0.3, 0.3]}]
    text = " ".join(q["question"] + " " + q["answer"] for s in range(20)
                    for q in grounded_qa(objs, random.Random(s), short=False))
    assert "the square" in text and "color" not in text.lower()
    assert describe(objs).startswith("The image shows one object: one square.")


def test_detail_and_reasoning_state_true_facts():
    objs = [{"category": "circle", "color": "red", "box": [0.05, 0.05, 0.45, 0.45]},
            {"category": "star", "color": "blue", "box": [0.75, 0.75, 0.85, 0.85]},
            {"category": "square", "color": "red", "box": [0.7, 0.1, 0.8, 0.2]}]
    text = describe(objs)
    assert "large red circle in the top left" in text and "small blue star in the bottom right" in text
    assert "two objects are red" in text
    seen = set()
    for s in range(200):
        qa = reasoning_qa(objs, random.Random(s))
        seen.add(qa["question"])
        if qa["question"].startswith("Which is larger"):
            assert qa["answer"].startswith("The red circle is larger")
        if qa["question"] == "How many other objects have the same color as the red circle?":
            assert qa["answer"].startswith("1.") and "the red square" in qa["answer"]
        if qa["question"].startswith("If the blue star were taken away"):
            assert qa["answer"].startswith("2.")
    assert len(seen) > 5
    assert area(objs[0]) > area(objs[1])


def test_load_coco_normalizes_boxes_and_keeps_colour(tmp_path):
    root = make_world(tmp_path, n_images=2, size=64)
    scenes = load_coco(root / "instances_train.json", root / "captions_train.json")
    assert [s.file_name for s in scenes] == ["train/000001.png", "train/000002.png"]
    inst = json.loads((root / "instances_train.json").read_text())
    a = inst["annotations"][0]
    x, y, w, h = a["bbox"]
    assert scenes[0].objects[0]["box"] == pytest.approx([x / 64, y / 64, (x + w) / 64, (y + h) / 64], abs=1e-4)
    assert scenes[0].objects[0]["color"] == a["color"] and scenes[0].captions


def test_no_question_never_names_an_avoided_pair():
    """The demo keeps held-out colour-shape pairs out of training text, "no" questions included."""
    rng = random.Random(3)
    colors, shapes = ["red", "green", "blue"], ["circle", "square", "star"]
    avoid = frozenset({"red star", "blue circle"})
    asked = Counter()
    for _ in range(400):
        objs = [{"category": rng.choice(["circle", "square"]), "color": rng.choice(["red", "green"]),
                 "box": [0.1, 0.1, 0.3, 0.3]}]
        for qa in grounded_qa(objs, rng, shapes=shapes, colors=colors, avoid=avoid):
            m = re.fullmatch(r"Is there an? (.+) in the image\?", qa["question"].removesuffix(SHORT_SUFFIX))
            if m and qa["answer"] == "no":
                asked[m[1]] += 1
    assert asked and not set(asked) & avoid
    assert len(asked) >= 5  # still a spread of negatives, not one fallback


def test_annotated_size_wins_over_box_area(tmp_path):
    root = make_world(tmp_path, n_images=1, size=64)
    inst = json.loads((root / "instances_train.json").read_text())
    for a in inst["annotations"]:
        a["size"] = "large"  # whatever the box says
    (root / "instances_train.json").write_text(json.dumps(inst))
    scene = load_coco(root / "instances_train.json")[0]
    assert all(o["size"] == "large" for o in scene.objects)
    assert "medium-sized" not in describe(scene.objects) and "small" not in describe(scene.objects)


def test_load_layout_text(tmp_path):
    p = tmp_path / "scenes.txt"
    p.write_text("image: a.png\nA red circle and a square.\n"
                 "red circle: [0.1, 0.2, 0.3, 0.4]\nsquare: [0.5, 0.5, 0.9, 0.9]\n"
                 "image: b.png\nblue star: [0, 0, 1, 1]\n")
    a, b = load_layout_text(p)
    assert a.file_name == "a.png" and a.captions == ["A red circle and a square."]
    assert a.objects == [{"category": "circle", "color": "red", "box": [0.1, 0.2, 0.3, 0.4]},
                         {"category": "square", "color": None, "box": [0.5, 0.5, 0.9, 0.9]}]
    assert "red circle: [0.1, 0.2, 0.3, 0.4]" in a.context() and b.objects[0]["color"] == "blue"
    p.write_text("image: a.png\ncircle: [0.5, 0.2, 0.3, 0.4]\n")
    with pytest.raises(ValueError, match=":2: box"):
        load_layout_text(p)


def test_parse_replies_and_reasons():
    assert parse_qa("Question: What is it?\n===\nAnswer: A cat.\n===\nQuestion: Colour?\n===\nAnswer: Black.") == [
        ("What is it?", "A cat."), ("Colour?", "Black.")]
    for bad, reason in [("", "empty reply"), ("Question: a?\n===\n", "no answer"), ("Hello there", "no 'Question:'"),
                        ("Answer: x\n===\nQuestion: y", "alternate"),
                        ("Question: where?\n===\nAnswer: at [0.1, 0.2]", "annotations"),
                        ("Question: q\n===\nAnswer: The bounding box shows it", "annotations")]:
        with pytest.raises(ParseError, match=re.escape(reason)):
            parse_qa(bad)
    with pytest.raises(ParseError, match="fewer than"):
        parse_description("Too short.")
    assert parse_tags("Tags: Coding, math, coding.") == ["coding", "math"]


def test_generate_cli_with_rule_teacher_on_world(tmp_path):
    root = make_world(tmp_path / "world", n_images=8)
    out = tmp_path / "gen.json"
    argv = ["generate", "--annotations", str(root / "instances_train.json"), "--captions",
            str(root / "captions_train.json"),
            "--out", str(out), "--short-fraction", "0.5", "--seed", "3"]
    assert main(argv) == 0
    records = json.loads(out.read_text())
    assert len(records) == 8 * 3
    assert (tmp_path / "gen.json.rejects.jsonl").read_text() == ""
    assert all(r["image"].startswith("train/") and r["conversations"][0]["value"].startswith("<image>\n")
               for r in records)
    kinds = Counter(r["id"].split("-")[1] for r in records)
    assert kinds["detail"] == kinds["reasoning"] == 8
    assert kinds["short"] + kinds["conversation"] == 8 and kinds["short"] > 0
    convs = read_conversations(out, image_folder=root, check_images=True)
    assert len(convs) == 24
    first = out.read_text()
    assert main(argv) == 0 and out.read_text() == first  # seeded: identical output
    assert main(argv[:-1] + ["4"]) == 0 and out.read_text() != first
    assert main(argv + ["--kinds", "detail", "--limit", "2"]) == 0
    assert [r["id"] for r in json.loads(out.read_text())] == ["1-detail", "2-detail"]


def test_per_type_asks_several_different_right_questions_of_each_type():
    rng = random.Random(5)
    grew = 0
    for _ in range(300):
        objs = random_objects(rng, colored=True)
        seed = rng.random()
        one = grounded_qa(objs, random.Random(seed), short=True)
        three = grounded_qa(objs, random.Random(seed), short=True, per_type=3)
        assert len({q["question"] for q in three}) == len(three)  # never the same question twice
        for qa in three:
            _check(objs, qa["question"], qa["answer"])
        per = Counter(q["type"] for q in three)
        assert Counter(q["type"] for q in one).keys() == per.keys() and max(per.values()) <= 6
        answers = Counter(q["answer"] for q in three if q["type"] == "exists")
        assert answers["yes"] == answers["no"] >= 1  # existence stays balanced
        grew += len(three) > len(one)
    assert grew > 250
    with pytest.raises(ValueError, match="per_type"):
        grounded_qa(objs, rng, per_type=0)


def test_generate_cli_per_type(tmp_path):
    root = make_world(tmp_path / "world", n_images=6)
    out = tmp_path / "gen.json"
    argv = ["generate", "--annotations", str(root / "instances_train.json"), "--out", str(out),
            "--kinds", "conversation", "--short-fraction", "1"]
    assert main(argv) == 0
    one = [len(r["conversations"]) for r in json.loads(out.read_text())]
    assert main(argv + ["--per-type", "3"]) == 0
    three = [len(r["conversations"]) for r in json.loads(out.read_text())]
    assert sum(three) > sum(one) and all(a <= b for a, b in zip(one, three))
    with pytest.raises(SystemExit, match="rule-teacher setting"):
        main(argv + ["--per-type", "2", "--teacher", "openai"])
