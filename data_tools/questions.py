"""The model's own questions (self-instruct over captions): it describes an unlabelled image, and
questions are written about the objects its own description names, so what is asked follows what
the model says it sees. Its answers to them are then sampled and verified like any others.

    prompts, captions = own_prompts(assistant, pool, rng)   # one question per image

Questions are the rule teacher's short-answer kinds about a named "<colour> <shape>": its colour,
the shape of its colour, whether it is there, how many of its shape there are.
"""
from __future__ import annotations

import random
import re

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.images import load_image

from .teachers.rule import COLORS, SHAPES, SHORT_SUFFIX
from .teachers.scene import article, plural

CAPTION_PROMPT = "Describe the image in detail."


def mentions(caption: str, colors=COLORS, shapes=SHAPES) -> list[tuple[str, str]]:
    """(colour, shape) pairs the caption names, in order, each once."""
    words = re.findall(r"[a-z]+", caption.lower())
    found = [(a, b.rstrip("s") if b.rstrip("s") in shapes else b) for a, b in zip(words, words[1:])
             if a in colors and (b in shapes or b.rstrip("s") in shapes)]
    return list(dict.fromkeys(found))


def caption_questions(caption: str, colors=COLORS, shapes=SHAPES) -> list[str]:
    named = mentions(caption, colors, shapes)
    out = []
    for color, shape in named:
        if sum(s == shape for _, s in named) == 1:
            out.append(f"What color is the {shape}?")
        if sum(c == color for c, _ in named) == 1:
            out.append(f"What shape is the {color} object?")
        out += [f"Is there {article(color)} {color} {shape} in the image?",
                f"How many {plural(shape)} are there in the image?"]
    return [q + SHORT_SUFFIX for q in out]


def own_prompts(assistant, pool: list[Conversation], rng: random.Random, max_new_tokens: int = 96,
                batch_size: int = 16) -> tuple[list[Conversation], list[str]]:
    """One question per pool image (its first), written from the model's own description of it
    (greedy); records without an image, and images whose description names no coloured shape, give none."""
    pool = [c for c in pool if c.images]
    ask = [Message("user", f"{IMAGE_TOKEN}\n{CAPTION_PROMPT}")]
    captions: list[str] = []
    for b in range(0, len(pool), batch_size):  # images opened batch by batch
        captions += assistant.reply_batch([(ask, [load_image(c.images[0])]) for c in pool[b:b + batch_size]],
                                          max_new_tokens)
    prompts = []
    for conv, caption in zip(pool, captions):
        questions = caption_questions(caption)
        if questions:
            q = rng.choice(questions)
            prompts.append(Conversation([Message("user", f"{IMAGE_TOKEN}\n{q}")], conv.images[:1],
                                        f"{conv.id}-own", conv.source))
    return prompts, captions
