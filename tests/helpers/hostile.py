"""A hostile LLaVA-format data set, as people download them: 26 records, 14 good and 12 bad.

    paths = make_hostile(tmp_path)   # {"data": .../hostile.json, "images": .../images, "outside": ...}
    BAD[id] is the reason each bad record must be rejected with; GOOD lists the ids that must train.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

from PIL import Image

COLOURS = [(220, 30, 30), (30, 180, 60), (40, 60, 220), (230, 210, 40), (200, 90, 200)]

# id -> reason (the `reason` column of rejects.jsonl)
BAD = {
    "twoplaceholders": "placeholder count mismatch",
    "emptyanswer": "empty answer",
    "noanswer": "no answer",
    "badrole": "unknown role",
    "noconversations": "no conversations",
    "placeholderinanswer": "placeholder inside answer",
    "dotdot": "path escapes image folder",
    "absolute": "path escapes image folder",
    "truncatedjpg": "unreadable image",
    "emptyfile": "unreadable image",
    "textfile": "unreadable image",
    "missingfile": "image file not found",
}
STRUCTURAL = [k for k, v in BAD.items() if v not in ("unreadable image", "image file not found")]
GOOD = [f"img{i}" for i in range(9)] + ["rgba", "imend", "text0", "text1", "text2"]


def _conv(rid: str, question: str, answer: str, image: str | None = None) -> dict:
    rec = {"id": rid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        rec["image"] = image
    return rec


def make_hostile(root: Path) -> dict[str, Path]:
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(9):
        Image.new("RGB", (28 + i, 24), COLOURS[i % 5]).save(images / f"{i}.png")
    Image.new("RGBA", (30, 30), (10, 200, 10, 128)).save(images / "rgba.png")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 30)).save(buf, format="JPEG")
    (images / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (images / "empty.jpg").write_bytes(b"")
    (images / "text.jpg").write_text("this is not an image\n")
    outside = root / "outside.png"  # a valid image, but not inside the image folder
    Image.new("RGB", (24, 24), (0, 0, 0)).save(outside)

    q = "<image>\nWhat colour is the image?"
    recs = [_conv(f"img{i}", q, f"The image is colour {i % 5}.", f"{i}.png") for i in range(9)]
    recs += [
        _conv("rgba", q, "Green, half transparent.", "rgba.png"),
        # special-token text in an answer is text: trained on, and the turn still ends at the real marker
        _conv("imend", "How does ChatML end a turn?", "With <|im_end|> then a newline; <|im_start|>user starts one."),
        _conv("text0", "Add 2 and 3.", "5"),
        _conv("text1", "Reverse 'cat'.", "tac"),
        _conv("text2", "Say <|im_start|>system in plain text.", "Done."),
        _conv("twoplaceholders", "<image>\n<image>\nCompare them.", "Same.", "0.png"),
        _conv("emptyanswer", q, "   ", "1.png"),
        {"id": "noanswer", "image": "2.png", "conversations": [{"from": "human", "value": q}]},
        {"id": "badrole", "image": "3.png",
         "conversations": [{"from": "robot", "value": q}, {"from": "gpt", "value": "x"}]},
        {"id": "noconversations", "image": "4.png"},
        _conv("placeholderinanswer", q, "It is <image> red.", "5.png"),
        _conv("dotdot", q, "Black.", "../outside.png"),
        _conv("absolute", q, "Black.", str(outside.resolve())),
        _conv("truncatedjpg", q, "Red.", "truncated.jpg"),
        _conv("emptyfile", q, "Red.", "empty.jpg"),
        _conv("textfile", q, "Red.", "text.jpg"),
        _conv("missingfile", q, "Red.", "missing.jpg"),
    ]
    assert len(recs) == 26 and len(BAD) == 12 and len(GOOD) == 14
    data = root / "hostile.json"
    data.write_text(json.dumps(recs, indent=1))
    return {"data": data, "images": images, "outside": outside}
