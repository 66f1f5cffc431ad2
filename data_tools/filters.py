"""Filters for generated instructions (Self-Instruct's): near-duplicates, length, keywords."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from tqdm import tqdm

from llava_lite.data.conversation import Conversation

from .rouge import rouge_l, tokens
from .tagging import query_text

# A text-only assistant cannot act on these (Self-Instruct's list, trimmed).
BLOCKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
             "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")


@dataclass
class InstructionFilter:
    """Accepts an instruction or says why not; accepted ones join the pool it compares against."""

    pool: list[str] = field(default_factory=list)
    max_rouge: float = 0.7
    min_words: int = 3
    max_words: int = 150
    blocklist: tuple[str, ...] = BLOCKLIST

    def __post_init__(self) -> None:
        self._pool_tokens = [tokens(p) for p in self.pool]

    def reason(self, text: str) -> str | None:
        """None when acceptable, else the reject reason."""
        words = tokens(text)
        if len(words) < self.min_words:
            return f"too short ({len(words)} words < {self.min_words})"
        if len(words) > self.max_words:
            return f"too long ({len(words)} words > {self.max_words})"
        low = " " + " ".join(words) + " "
        hit = next((k for k in self.blocklist if f" {k} " in low), None)
        if hit:
            return f"blocked keyword {hit!r}"
        if not text[:1].isalnum():
            return "starts with punctuation"
        best = max((rouge_l(words, p) for p in self._pool_tokens), default=0.0)
        if best > self.max_rouge:
            return f"near duplicate (ROUGE-L {best:.2f} > {self.max_rouge})"
        return None

    def add(self, text: str) -> None:
        self.pool.append(text)
        self._pool_tokens.append(tokens(text))


def dedup(convs: list[Conversation], max_rouge: float = 0.7) -> tuple[list[Conversation], list[tuple[str, str]]]:
    """Keep the first of every group of conversations whose requests overlap above `max_rouge`.

    Conversations about different images are never duplicates of each other: the same question
    about another picture is new data."""
    kept: list[Conversation] = []
    kept_tokens: list[tuple[tuple, list[str]]] = []
    dropped = []
    for conv in tqdm(convs, desc="dedup", leave=False):
        words, key = tokens(query_text(conv)), tuple(str(i) for i in conv.images)
        twin = next((i for i, (k, t) in enumerate(kept_tokens) if k == key and rouge_l(words, t) > max_rouge), None)
        if twin is None:
            kept.append(conv)
            kept_tokens.append((key, words))
        else:
            dropped.append((conv.where, f"near duplicate of {kept[twin].where}"))
    return kept, dropped


def normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()
