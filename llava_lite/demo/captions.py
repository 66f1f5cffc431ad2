"""Caption writing for the synthetic world: several wordings, every one naming every object.

Each caption names every object by colour and shape (sizes and positions in some wordings), so
any caption is a complete description: contrastive pre-training and stage-1 alignment can use
any of them, and a caption never mentions an object that is not in the image.
"""
from __future__ import annotations

import numpy as np

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
STAGE1_PROMPTS = (  # a few of LLaVA's "describe briefly" prompts (blip_laion_cc_sbu_558k)
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Write a terse but informative summary of the picture.",
)


def article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def position_phrase(position: str) -> str:
    """'top left' -> 'at the top left', 'center' -> 'in the center', 'left' -> 'on the left'."""
    if position == "center":
        return "in the center"
    if position in ("left", "right"):
        return f"on the {position}"
    return f"at the {position}"


def noun(o: dict, size: bool = True, article_: bool = True) -> str:
    words = f"{o['size']} {o['color']} {o['shape']}" if size else f"{o['color']} {o['shape']}"
    return f"{article(words)} {words}" if article_ else words


def join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _left_to_right(objs: list[dict]) -> list[dict]:
    return sorted(objs, key=lambda o: (o["bbox"][0] + o["bbox"][2] / 2, o["bbox"][1]))


def _templates(objs: list[dict], rng: np.random.Generator) -> list[str]:
    n, ordered = len(objs), _left_to_right(objs)
    count = number(n) if rng.random() < 0.7 else str(n)
    shapes_word = "shape" if n == 1 else "shapes"
    with_pos = [f"{noun(o)} {position_phrase(o['position'])}" for o in objs]
    out = [
        cap(join([noun(o) for o in objs])) + ".",
        f"{cap(count)} {shapes_word} on a gray background: {join([noun(o, size=False) for o in objs])}.",
        "There is " + join(with_pos) + ".",
        f"A picture of {count} {'object' if n == 1 else 'objects'}: {join([noun(o) for o in objs])}.",
        cap("; ".join(f"{position_phrase(o['position'])} there is {noun(o)}" for o in objs)) + ".",
    ]
    if n == 1:
        o = objs[0]
        out.append(f"A single {noun(o, article_=False)} {position_phrase(o['position'])}.")
        out.append(f"Just one {o['color']} {o['shape']} on a plain gray background.")
    else:
        out.append(f"From left to right: {join([noun(o, size=False) for o in ordered])}.")
        colors: dict[str, int] = {}
        for o in objs:
            colors[o["color"]] = colors.get(o["color"], 0) + 1
        summary = join([f"{number(k)} {c} {'shape' if k == 1 else 'shapes'}" for c, k in colors.items()])
        out.append(f"{cap(summary)}: {join([noun(o) for o in objs])}.")
    return out


def caption_set(objs: list[dict], rng: np.random.Generator) -> list[str]:
    """3 to 5 distinct captions for one image, in varied wording."""
    options = _templates(objs, rng)
    k = int(rng.integers(3, 6))
    return [options[i] for i in sorted(rng.choice(len(options), size=min(k, len(options)), replace=False))]
