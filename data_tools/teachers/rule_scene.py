"""Long-form rule teacher outputs: detailed descriptions and complex-reasoning questions.

Like `grounded_qa`, every statement is computed from the boxes, and comparisons are made only
when the difference is clear (area ratio, centre margin), so the justification is always true.
"""
from __future__ import annotations

import random
from collections import Counter

from .scene import PAIR_MARGIN, Obj, area, article, center, name, plural, referable

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
AREA_RATIO = 1.5  # one box must be this many times the other's area to call it "larger"


def number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def size_word(obj: Obj) -> str:
    """The annotated size when there is one (the demo world's "small"/"large"), else from the box area."""
    if obj.get("size"):
        return obj["size"]
    a = area(obj)
    return "small" if a < 0.03 else "medium-sized" if a < 0.12 else "large"


def location_phrase(obj: Obj) -> str:
    """A 3x3 grid word: 'in the top left of the image', 'in the center of the image'..."""
    cx, cy = center(obj)
    col = "left" if cx < 1 / 3 else "right" if cx > 2 / 3 else ""
    row = "top" if cy < 1 / 3 else "bottom" if cy > 2 / 3 else ""
    if row and col:
        return f"in the {row} {col} of the image"
    if row:
        return f"at the {row} of the image"
    return f"on the {col} of the image" if col else "in the center of the image"


def describe(objects: list[Obj]) -> str:
    """Every object, with colour, shape, size and location, left to right."""
    if not objects:
        return "The image is empty; it shows no objects."
    cats = Counter(o["category"] for o in objects)
    parts = [f"{number(n)} {plural(c) if n > 1 else c}" for c, n in sorted(cats.items())]
    summary = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    noun = "object" if len(objects) == 1 else "objects"
    lines = [f"The image shows {number(len(objects))} {noun}: {summary}."]
    said: set[str] = set()
    for o in sorted(objects, key=lambda o: center(o)[0]):
        words = f"{size_word(o)} {name(o)}"
        # Two objects can read the same; "another" says it is a second one, not a repeat.
        lines.append(f"There is {'another' if words in said else article(words)} {words} {location_phrase(o)}.")
        said.add(words)
    colors = Counter(o["color"] for o in objects if o.get("color"))
    shared = [f"{number(n)} objects are {c}" for c, n in sorted(colors.items()) if n > 1]
    if shared:
        lines.append("In terms of color, " + " and ".join(shared) + ".")
    return " ".join(lines)


def _larger(a: Obj, b: Obj) -> tuple[str, str] | None:
    big, small = (a, b) if area(a) >= area(b) else (b, a)
    if area(big) < AREA_RATIO * area(small):
        return None
    return (
        f"Which is larger, the {name(a)} or the {name(b)}?",
        f"The {name(big)} is larger. Its box covers about {area(big):.0%} of the image, "
        f"while the {name(small)} covers only about {area(small):.0%}.",
    )


def _further_left(a: Obj, b: Obj) -> tuple[str, str] | None:
    (ax, _), (bx, _) = center(a), center(b)
    if abs(ax - bx) < PAIR_MARGIN:
        return None
    (l, lx), (r, rx) = sorted([(a, ax), (b, bx)], key=lambda t: t[1])
    return (
        f"Which is further to the left, the {name(a)} or the {name(b)}?",
        f"The {name(l)} is further to the left: its center is {lx:.0%} of the way across the image, "
        f"while the {name(r)}'s center is at {rx:.0%}.",
    )


def _same_color(o: Obj, objects: list[Obj]) -> tuple[str, str] | None:
    if not all(x.get("color") for x in objects):
        return None
    others = [x for x in objects if x is not o and x["color"] == o["color"]]
    q = f"How many other objects have the same color as the {name(o)}?"
    if not others:
        return q, f"None. The {name(o)} is the only {o['color']} object in the image, so the answer is 0."
    listed = ", ".join(f"the {name(x)}" for x in others)
    verb = "is" if len(others) == 1 else "are"
    return q, (
        f"{len(others)}. Besides the {name(o)}, {listed} {verb} also {o['color']}, "
        f"so {len(others)} other object{'s' if len(others) > 1 else ''} share its color."
    )


def _removal(o: Obj, objects: list[Obj]) -> tuple[str, str]:
    n = len(objects) - 1
    return (
        f"If the {name(o)} were taken away, how many objects would remain in the image?",
        f"{n}. The image has {len(objects)} object{'s' if len(objects) > 1 else ''}, "
        f"and removing the {name(o)} leaves {n}.",
    )


def _more_of(objects: list[Obj]) -> list[tuple[str, str]]:
    cats = Counter(o["category"] for o in objects)
    out = []
    for a in cats:
        for b in cats:
            if a != b:
                yes = cats[a] > cats[b]
                facts = (
                    f"There {'is' if cats[a] == 1 else 'are'} {cats[a]} {a if cats[a] == 1 else plural(a)} "
                    f"and {cats[b]} {b if cats[b] == 1 else plural(b)}"
                )
                out.append((
                    f"Are there more {plural(a)} than {plural(b)} in the image?",
                    f"{'Yes' if yes else 'No'}. {facts}, "
                    f"so {'there are more' if yes else 'there are not more'} {plural(a)}.",
                ))
    return out


def reasoning_qa(objects: list[Obj], rng: random.Random) -> dict[str, str]:
    """One question that needs a comparison or a count, with a short justification."""
    refs = referable(objects)
    candidates = [c for a in refs for b in refs if a is not b for c in (_larger(a, b), _further_left(a, b)) if c]
    candidates += [c for o in refs for c in (_same_color(o, objects), _removal(o, objects)) if c]
    candidates += _more_of(objects)
    if not candidates:
        n = len(objects)
        candidates = [("How many objects are in the image?", f"{n}. Counting every shape in the image gives {n}.")]
    q, a = rng.choice(candidates)
    return {"question": q, "answer": a, "type": "reasoning"}
