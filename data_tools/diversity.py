"""How varied a set of generated records is: the figures the self-improvement loop logs every round
and the floor that stops it when its own data collapses to a few answers (mode collapse).

    distinct_n(texts, 2)      share of distinct word bigrams over all bigrams (Li et al. 2016)
    answer_entropy(answers)   Shannon entropy, in bits, of the normalised answers
    tag_coverage(convs)       distinct InsTag-style skill tags of the requests (llava_lite.data.tags)
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from llava_lite.data.conversation import Conversation
from llava_lite.data.tags import heuristic_tags
from llava_lite.eval.scorers import vqa_normalize

from .rouge import tokens


def distinct_n(texts: Sequence[str], n: int) -> float:
    grams = [tuple(t[i:i + n]) for t in map(tokens, texts) for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def answer_entropy(answers: Sequence[str]) -> float:
    counts = Counter(vqa_normalize(a) for a in answers)
    total = sum(counts.values())
    return sum(c / total * math.log2(total / c) for c in counts.values()) if total else 0.0


def tag_coverage(convs: Sequence[Conversation]) -> int:
    return len({t for c in convs for t in heuristic_tags(c)})


def diversity(convs: Sequence[Conversation]) -> dict[str, float]:
    """The figures of a set of (question, answer) records, answers being each record's last turn."""
    answers = [c.messages[-1].content for c in convs]
    texts = [" ".join(m.content for m in c.messages if m.role != "system") for c in convs]
    return {"distinct_1": distinct_n(answers, 1), "distinct_2": distinct_n(texts, 2),
            "answer_entropy": answer_entropy(answers), "tag_coverage": tag_coverage(convs)}
