"""The demo's POPE-style and multiple-choice sets: balanced, answers true to the annotations,
absent objects really absent, options holding the answer once."""
from __future__ import annotations

from collections import Counter

import pytest

from llava_lite.demo.eval_sets import pope_rows, write_sets
from llava_lite.demo.world import load_objects, make_world
from llava_lite.eval.scorers import read_questions


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    make_world(out, n_train=4, n_test=12, seed=3, workers=1)
    return out


def test_pope_set_is_balanced_and_true(world):
    rows = pope_rows(world, seed=0)
    images, objects = load_objects(world, "test")
    by_file = {im["file_name"]: {(o["color"], o["shape"]) for o in objects[im["id"]]} for im in images}
    assert len(rows) == 4 * len(images)
    assert Counter((r["category"], r["answer"]) for r in rows) == {(c, a): len(images)
                                                                 for c in ("random", "adversarial")
                                                                 for a in ("yes", "no")}
    for r in rows:
        words = r["text"].rstrip("?").split()  # "Is there a red circle in the image"
        pair = (words[3], words[4])
        assert (pair in by_file[r["image"]]) == (r["answer"] == "yes"), r
        if r["category"] == "adversarial" and r["answer"] == "no":  # shares a colour or a shape with what is there
            assert any(pair[0] == c or pair[1] == s for c, s in by_file[r["image"]])
    assert pope_rows(world, seed=0) == rows  # deterministic


def test_choice_set_has_text_and_image_rows(world, tmp_path):
    paths = write_sets(tmp_path, world, seed=0)
    rows = read_questions(paths["choice"], "choice")
    assert {r["kind"] for r in rows} == {"text", "image"}
    assert all(r["choices"].count(r["answer"]) == 1 and 2 <= len(r["choices"]) <= 4 for r in rows)
    assert all(("image" in r) == (r["kind"] == "image") for r in rows)
    assert len(read_questions(paths["pope"])) == 4 * 12
