"""Read image annotations into scenes: captions plus objects with normalized boxes.

Two layouts: COCO-style `instances_*.json` (+ optional `captions_*.json`), whose annotations may
carry extra attributes such as `color`; and LLaVA's caption/box text, here one scene per block:

    image: train/000001.png
    A red circle next to a blue square.
    red circle: [0.1, 0.2, 0.35, 0.45]
    square: [0.6, 0.55, 0.9, 0.85]

A label whose first word is a known colour is split into colour and category.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llava_lite.data.conversation import DataError

from .teachers.rule import COLORS
from .teachers.scene import Obj

BOX_LINE = re.compile(r"^\s*(?P<label>[^:\[\]]+?)\s*:\s*\[(?P<nums>[^\]]*)\]\s*$")


@dataclass
class Scene:
    id: str
    file_name: str  # relative to the image folder
    objects: list[Obj]
    captions: list[str] = field(default_factory=list)

    def context(self) -> str:
        """What an LLM teacher is shown: LLaVA's captions-then-boxes text."""
        boxes = [
            f"{' '.join(filter(None, [o.get('color'), o['category']]))}: [{', '.join(f'{v:.3g}' for v in o['box'])}]"
            for o in self.objects
        ]
        return "\n".join(self.captions) + "\n\n" + "\n".join(boxes)


def load_coco(instances: Path, captions: Path | None = None) -> list[Scene]:
    """COCO instances (boxes [x, y, w, h] in pixels) -> scenes with boxes [x1, y1, x2, y2] in 0-1."""
    data = json.loads(Path(instances).read_text())
    cats = {c["id"]: c["name"] for c in data["categories"]}
    scenes = {im["id"]: (im, Scene(id=str(im["id"]), file_name=im["file_name"], objects=[])) for im in data["images"]}
    for ann in sorted(data["annotations"], key=lambda a: a["id"]):
        im, scene = scenes[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        W, H = im["width"], im["height"]
        box = [round(x / W, 4), round(y / H, 4), round((x + w) / W, 4), round((y + h) / H, 4)]
        obj = {"category": cats[ann["category_id"]], "color": ann.get("color"), "box": box}
        if ann.get("size"):  # an annotated size word wins over one guessed from the box area
            obj["size"] = ann["size"]
        scene.objects.append(obj)
    if captions is not None:
        for ann in sorted(json.loads(Path(captions).read_text())["annotations"], key=lambda a: a["id"]):
            if ann["image_id"] in scenes:
                scenes[ann["image_id"]][1].captions.append(ann["caption"].strip())
    return [s for _, s in scenes.values()]


def _label(label: str) -> tuple[str | None, str]:
    first, _, rest = label.strip().partition(" ")
    return (first.lower(), rest.strip()) if rest and first.lower() in COLORS else (None, label.strip())


def load_layout_text(path: Path) -> list[Scene]:
    """LLaVA caption/box text, one `image:` header per scene."""
    scenes: list[Scene] = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        if line.lower().startswith("image:"):
            file_name = line.split(":", 1)[1].strip()
            scenes.append(Scene(id=Path(file_name).stem, file_name=file_name, objects=[]))
            continue
        if not scenes:
            raise DataError(f"{path}:{n}: text before the first 'image:' line", "bad annotation")
        m = BOX_LINE.match(line)
        if m:
            box = [float(v) for v in m.group("nums").split(",")]
            if len(box) != 4 or not all(0 <= v <= 1 for v in box) or box[0] > box[2] or box[1] > box[3]:
                raise DataError(f"{path}:{n}: box must be [x1, y1, x2, y2] with 0 <= x1 <= x2 <= 1: {line.strip()!r}",
                                "bad annotation")
            color, category = _label(m.group("label"))
            scenes[-1].objects.append({"category": category, "color": color, "box": box})
        else:
            scenes[-1].captions.append(line.strip())
    return scenes


def load_scenes(path: Path, captions: Path | None = None) -> list[Scene]:
    """COCO JSON or layout text, by file suffix."""
    return load_coco(path, captions) if Path(path).suffix == ".json" else load_layout_text(path)


def vocabulary(scenes: list[Scene]) -> tuple[list[str], list[str]]:
    """All categories and colours in the data set: the pool negative questions draw from."""
    objs = [o for s in scenes for o in s.objects]
    return sorted({o["category"] for o in objs}), sorted({o["color"] for o in objs if o.get("color")})
