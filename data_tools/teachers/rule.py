"""Offline rule-based teacher: question/answer pairs computed from the annotations themselves.

Every answer is derived from the boxes, so it is right by construction; every question names
its object unambiguously (a (colour, shape) pair that occurs once) and positions are asked only
when centres differ by a clear margin, so there is exactly one right answer. The demo's VQA
evaluation set is built with `grounded_qa` too, on held-out images.
"""
from __future__ import annotations

import random
from collections import Counter

from llava_lite.data.tags import SHORT_SUFFIX
from llava_lite.infer.openai_client import Request, TeacherError

from .rule_scene import describe, reasoning_qa
from .rule_text import evolve
from .scene import CENTER_MARGIN, PAIR_MARGIN, Obj, article, center, name, plural, referable

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "brown", "black", "white", "gray", "cyan")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "rectangle", "diamond", "cross", "ellipse", "pentagon")

QA = tuple[str, str, str, str]  # (type, question, short answer, long answer)


def _color_qa(objects: list[Obj]) -> list[QA]:
    cats = Counter(o["category"] for o in objects)
    return [
        ("color", f"What color is the {o['category']}?", o["color"], f"The {o['category']} is {o['color']}.")
        for o in objects
        if o.get("color") and cats[o["category"]] == 1
    ]


def _shape_qa(objects: list[Obj]) -> list[QA]:
    colors = Counter(o.get("color") for o in objects)
    out = [
        ("shape", f"What shape is the {o['color']} object?", o["category"],
         f"The {o['color']} object is {article(o['category'])} {o['category']}.")
        for o in objects
        if o.get("color") and colors[o["color"]] == 1 and None not in colors  # an uncoloured one might be it
    ]
    if len(objects) == 1:
        c = objects[0]["category"]
        out.append(("shape", "What shape is the object in the image?", c, f"The object is {article(c)} {c}."))
    return out


def _count_sentence(n: int, noun: str) -> str:
    if n == 0:
        return f"There are no {plural(noun)} in the image."
    return f"There is 1 {noun} in the image." if n == 1 else f"There are {n} {plural(noun)} in the image."


def _count_qa(objects: list[Obj], shapes: list[str], rng: random.Random) -> list[QA]:
    cats = Counter(o["category"] for o in objects)
    absent = [s for s in shapes if s not in cats]
    asked = sorted(cats) + ([rng.choice(absent)] if absent else [])
    out = [
        ("count", f"How many {plural(c)} are there in the image?", str(cats[c]), _count_sentence(cats[c], c))
        for c in asked
    ]
    out.append(
        (
            "count",
            "How many objects are there in the image?",
            str(len(objects)),
            _count_sentence(len(objects), "object"),
        )
    )
    if all(o.get("color") for o in objects):
        for col, n in sorted(Counter(o["color"] for o in objects).items()):
            out.append(
                (
                    "count",
                    f"How many {col} objects are there in the image?",
                    str(n),
                    _count_sentence(n, f"{col} object"),
                )
            )
    return out


def _position_qa(objects: list[Obj]) -> list[QA]:
    out: list[QA] = []
    refs = referable(objects)
    for o in refs:
        (cx, cy), n = center(o), name(o)
        if abs(cx - 0.5) >= CENTER_MARGIN:
            side = "left" if cx < 0.5 else "right"
            out.append(
                (
                    "position",
                    f"Is the {n} on the left or right side of the image?",
                    side,
                    f"The {n} is on the {side} side of the image.",
                )
            )
        if abs(cy - 0.5) >= CENTER_MARGIN:
            half = "top" if cy < 0.5 else "bottom"  # image y grows downwards
            out.append(
                (
                    "position",
                    f"Is the {n} in the top or bottom half of the image?",
                    half,
                    f"The {n} is in the {half} half of the image.",
                )
            )
    for a in refs:
        for b in refs:
            if a is b:
                continue
            (ax, ay), (bx, by) = center(a), center(b)
            if abs(ax - bx) >= PAIR_MARGIN:
                side = "left" if ax < bx else "right"
                out.append(("position", f"Is the {name(a)} to the left or right of the {name(b)}?", side,
                            f"The {name(a)} is to the {side} of the {name(b)}."))
            if abs(ay - by) >= PAIR_MARGIN:
                rel = "above" if ay < by else "below"
                out.append(
                    (
                        "position",
                        f"Is the {name(a)} above or below the {name(b)}?",
                        rel,
                        f"The {name(a)} is {rel} the {name(b)}.",
                    )
                )
    return out


def _exists_qa(objects: list[Obj], shapes: list[str], colors: list[str], rng: random.Random,
               avoid: frozenset[str] = frozenset(), n: int = 1) -> list[QA]:
    """`n` questions whose answer is yes and as many whose answer is no, so yes/no stays balanced
    (fewer when the image has fewer distinct objects). A "no" question never names an object in
    `avoid` (e.g. colour-shape pairs held out of training)."""
    colored = all(o.get("color") for o in objects)  # "is there a red circle" is undecidable for an uncoloured circle
    present = {name(o) for o in objects} if colored else {o["category"] for o in objects}
    if colored:
        cats, cols = sorted({o["category"] for o in objects}), sorted({o["color"] for o in objects})
        hard = [f"{c} {s}" for c in colors for s in cats] + [f"{c} {s}" for c in cols for s in shapes]
        pool = hard if rng.random() < 0.5 else [f"{c} {s}" for c in colors for s in shapes]  # half hard negatives
    else:
        pool = list(shapes)
    negatives = sorted(set(pool) - present - avoid) or sorted(
        {f"{c} {s}" for c in colors for s in shapes} - present - avoid
    )
    if n == 1:
        yeses, nos = [rng.choice(sorted(present))], [rng.choice(negatives)]
    else:
        k = min(n, len(present), len(negatives))
        yeses, nos = rng.sample(sorted(present), k), rng.sample(negatives, k)
    return [("exists", f"Is there {article(yes)} {yes} in the image?", "yes",
             f"Yes, there is {article(yes)} {yes} in the image.") for yes in yeses] + [
        ("exists", f"Is there {article(no)} {no} in the image?", "no", f"No, there is no {no} in the image.")
        for no in nos]


def grounded_qa(
    objects: list[Obj], rng: random.Random, short: bool = True, *, shapes: list[str] | None = None,
    colors: list[str] | None = None, avoid: frozenset[str] = frozenset(), per_type: int = 1,
) -> list[dict[str, str]]:
    """Questions about `objects` with answers computed from them: `per_type` different questions of
    each type where the image allows (existence: `per_type` yes and as many no), in random order.

    `short=True`: single-word answers and LLaVA-1.5's short-answer suffix on the question;
    `short=False`: full-sentence answers. `shapes`/`colors` are the vocabulary that "no" questions
    and zero counts draw from (default SHAPES/COLORS); pass the data set's own so they stay in-world.
    `avoid`: object names ("red star") no "no" question may mention, such as held-out pairs."""
    if not objects:
        return []
    shapes = sorted(set(shapes or SHAPES) | {o["category"] for o in objects})
    colors = sorted(set(colors or COLORS) | {o["color"] for o in objects if o.get("color")})
    groups = [_color_qa(objects), _shape_qa(objects), _count_qa(objects, shapes, rng), _position_qa(objects)]
    if per_type < 1:
        raise ValueError(f"per_type must be >= 1, got {per_type}")
    picked = [[rng.choice(g)] if per_type == 1 else rng.sample(g, min(per_type, len(g))) for g in groups if g]
    chosen = [qa for g in picked for qa in g] + _exists_qa(objects, shapes, colors, rng, avoid, per_type)
    rng.shuffle(chosen)
    return [
        {"question": q + SHORT_SUFFIX if short else q, "answer": sa if short else la, "type": t}
        for t, q, sa, la in chosen
    ]


def render_qa(pairs: list[dict[str, str]]) -> str:
    """The reply format the parser reads, the same one LLM teachers are asked to write."""
    return "\n===\n".join(f"Question: {p['question']}\n===\nAnswer: {p['answer']}" for p in pairs)


class RuleTeacher:
    """Answers generation requests from their structured payload; needs no model and no network."""

    name = "rule"
    concurrency = 1

    def __init__(self, avoid: set[str] | frozenset[str] = frozenset()):
        self.avoid = frozenset(avoid)  # names ("red star") that "no" questions must not mention

    def complete(self, request: Request) -> str:
        rng, p = random.Random(request.seed), request.payload
        if request.task == "conversation":
            return render_qa(grounded_qa(p["objects"], rng, short=p.get("short", False), shapes=p.get("shapes"),
                                         colors=p.get("colors"), avoid=self.avoid, per_type=p.get("per_type", 1)))
        if request.task == "detail":
            return describe(p["objects"])
        if request.task == "reasoning":
            return render_qa([reasoning_qa(p["objects"], rng)])
        if request.task == "expand":
            return evolve(p["instruction"], p["operation"], rng)
        raise TeacherError(
            f"the rule teacher cannot do task {request.task!r}; use an LLM teacher or the heuristic tagger"
        )
