"""Geometry and naming helpers shared by the rule teacher's question writers."""
from __future__ import annotations

from typing import Any

CENTER_MARGIN = 0.1  # an object's centre must be this far from the image centre to be "left"/"top"
PAIR_MARGIN = 0.15  # two centres must differ this much before one is "left of" the other
Obj = dict[str, Any]  # {"category": str, "color": str | None, "box": [x1, y1, x2, y2] in 0-1}


def center(obj: Obj) -> tuple[float, float]:
    x1, y1, x2, y2 = obj["box"]
    return (x1 + x2) / 2, (y1 + y2) / 2


def area(obj: Obj) -> float:
    x1, y1, x2, y2 = obj["box"]
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def plural(noun: str) -> str:
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


def name(obj: Obj) -> str:
    """"red circle" with a colour, "circle" without one."""
    return f"{obj['color']} {obj['category']}" if obj.get("color") else obj["category"]


def referable(objects: list[Obj]) -> list[Obj]:
    """Objects that `the <name>` picks out uniquely (an uncoloured circle could be the red one)."""

    def clash(a: Obj, b: Obj) -> bool:
        return a["category"] == b["category"] and (
            a.get("color") == b.get("color") or not a.get("color") or not b.get("color")
        )

    return [o for o in objects if not any(clash(o, p) for p in objects if p is not o)]
