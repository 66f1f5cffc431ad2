"""Parse teacher replies into question/answer turns; a reply that does not parse is a reject.

The reply format is LLaVA's: blocks separated by a line holding only `===`, each block starting
with `Question:` or `Answer:`. A `ParseError` carries the reason that goes to the rejects file.
"""
from __future__ import annotations

import re

SEPARATOR = re.compile(r"^\s*===+\s*$", re.MULTILINE)
LABEL = re.compile(r"^\s*(question|answer)\s*:\s*", re.IGNORECASE)
# The teacher saw boxes and captions, the student sees only the image: mentions of them leak.
LEAKS = re.compile(r"bounding box|coordinates?\b|\bcaption|\[\s*0?\.\d+\s*,", re.IGNORECASE)


class ParseError(ValueError):
    """A teacher reply that cannot become a training record; the message is the reason."""


def _check_text(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise ParseError(f"empty {what}")
    if LEAKS.search(text):
        raise ParseError(f"{what} mentions the annotations: {LEAKS.search(text).group(0)!r}")
    return text


def parse_qa(reply: str, max_pairs: int | None = None) -> list[tuple[str, str]]:
    """`Question: ... === Answer: ...` blocks -> [(question, answer), ...]."""
    blocks = [b for b in SEPARATOR.split(reply) if b.strip()]
    if not blocks:
        raise ParseError("empty reply")
    labelled = []
    for i, block in enumerate(blocks):
        m = LABEL.match(block)
        if not m:
            raise ParseError(f"block {i} has no 'Question:' or 'Answer:' label")
        labelled.append((m.group(1).lower(), block[m.end():]))
    if len(labelled) % 2:
        raise ParseError("a question has no answer")
    pairs = []
    for (qk, q), (ak, a) in zip(labelled[::2], labelled[1::2]):
        if (qk, ak) != ("question", "answer"):
            raise ParseError("questions and answers do not alternate")
        pairs.append((_check_text(q, "question"), _check_text(a, "answer")))
    if max_pairs is not None and len(pairs) > max_pairs:
        raise ParseError(f"{len(pairs)} question/answer pairs, expected at most {max_pairs}")
    return pairs


def parse_description(reply: str, min_words: int = 8) -> str:
    """A free-text description: long enough, not in Q&A form, no leaked annotations."""
    text = _check_text(reply, "description")
    if LABEL.match(text):
        raise ParseError("description is written as question/answer")
    if len(text.split()) < min_words:
        raise ParseError(f"description has fewer than {min_words} words")
    return text


def parse_instruction(reply: str) -> str:
    """One instruction; tolerates a leading 'Instruction:' label or list number."""
    lines = [l for l in reply.strip().splitlines() if l.strip()]
    if not lines:
        raise ParseError("empty reply")
    text = re.sub(r"^\s*(?:#?\d+[.)]\s*|(?:new\s+)?instruction\s*:\s*)", "", " ".join(lines), flags=re.IGNORECASE)
    return _check_text(text, "instruction")


def parse_tags(reply: str) -> list[str]:
    """'a, b, c' (optionally after 'Tags:') -> ['a', 'b', 'c'], lowercased and deduplicated."""
    text = re.sub(r"^\s*tags?\s*:\s*", "", reply.strip().splitlines()[0] if reply.strip() else "", flags=re.IGNORECASE)
    tags = list(dict.fromkeys(t.strip().strip(".").lower() for t in text.split(",") if t.strip().strip(".")))
    if not tags:
        raise ParseError("no tags in reply")
    return tags
