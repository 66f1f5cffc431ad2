"""A small world like the embedded demo's: COCO-style files and PNGs of coloured shapes, for the data-tools
tests (and the served teacher's)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star", "hexagon"]
COLORS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 70, 220), "yellow": (230, 200, 20),
          "purple": (130, 50, 170), "orange": (240, 130, 20)}


def random_objects(rng: random.Random, colored: bool = True) -> list[dict]:
    """1-4 objects with normalized boxes, as grounded_qa takes them."""
    objs = []
    for _ in range(rng.randint(1, 4)):
        w, h = rng.uniform(0.08, 0.35), rng.uniform(0.08, 0.35)
        x, y = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
        objs.append({"category": rng.choice(SHAPES), "color": rng.choice(list(COLORS)) if colored else None,
                     "box": [round(x, 3), round(y, 3), round(x + w, 3), round(y + h, 3)]})
    return objs


def make_world(root: Path, n_images: int = 6, size: int = 64, seed: int = 0, split: str = "train") -> Path:
    """Write root/instances_{split}.json, root/captions_{split}.json and root/{split}/NNNNNN.png."""
    rng = random.Random(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    images, anns, caps = [], [], []
    cats = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    for i in range(1, n_images + 1):
        file_name = f"{split}/{i:06d}.png"
        img = Image.new("RGB", (size, size), "white")
        draw = ImageDraw.Draw(img)
        for obj in random_objects(rng):
            x1, y1, x2, y2 = (round(v * size) for v in obj["box"])
            draw.rectangle([x1, y1, x2, y2], fill=COLORS[obj["color"]])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": SHAPES.index(obj["category"]) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "color": obj["color"]})
        img.save(root / file_name)
        images.append({"id": i, "file_name": file_name, "width": size, "height": size})
        caps.append({"id": i, "image_id": i, "caption": f"Some shapes on a white background ({i})."})
    (root / f"instances_{split}.json").write_text(json.dumps({"images": images, "categories": cats,
                                                              "annotations": anns}))
    (root / f"captions_{split}.json").write_text(json.dumps({"images": images, "annotations": caps}))
    return root
