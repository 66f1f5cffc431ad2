"""The small COCO-style world of helpers/world.py that the other data-tools tests build on: a sanity test."""
from __future__ import annotations

import json

from helpers.world import make_world


def test_world_files_are_coco_shaped(tmp_path):
    root = make_world(tmp_path, n_images=3)
    inst = json.loads((root / "instances_train.json").read_text())
    assert len(inst["images"]) == 3 and all((root / im["file_name"]).is_file() for im in inst["images"])
    assert {a["image_id"] for a in inst["annotations"]} == {1, 2, 3}
