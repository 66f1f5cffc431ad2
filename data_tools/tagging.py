"""InsTag-style tags per sample, complexity (tags per sample), diversity (distinct tags), selection.

Two taggers give the same output shape: a teacher asked with `prompts/tag.yaml`, and a cheap
keyword heuristic that needs nothing. Tags describe the user side of a conversation (what the
request asks for); the answer does not change what skill the request needs.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Conversation
from llava_lite.infer.openai_client import Request, Teacher, TeacherError, complete_all

from .parse import ParseError, parse_tags
from .prompts import few_shot_messages, load_prompt
from .teachers.rule import SHORT_SUFFIX

# (tag, pattern over the user turns); word boundaries keep "list" from matching "listen".
RULES: list[tuple[str, str]] = [
    ("counting", r"\bhow many\b|\bcount\b"),
    ("color recognition", r"\bwhat colou?r\b|\bcolou?rs?\b"),
    ("shape recognition", r"\bwhat shape\b|\bshapes?\b"),
    ("spatial relation", r"\bleft\b|\bright\b|\babove\b|\bbelow\b|\bwhere\b|\btop\b|\bbottom\b"),
    ("existence check", r"^\s*is there\b|\bare there any\b"),
    ("image description", r"\bdescribe\b|\bdescription\b|\bwhat do you see\b"),
    ("comparison", r"\blarger\b|\bsmaller\b|\bmore\b.*\bthan\b|\bcompare\b|\bfurther\b|\bwhich is\b"),
    ("coding", r"\bcode\b|\bpython\b|\bfunction\b|\bprogram\b|\bsql\b|\bjavascript\b|```"),
    ("math", r"\bcalculate\b|\bsolve\b|\bequation\b|\bmath\b|\bprime\b|\d+\s*[-+*/^]\s*\d+"),
    ("step-by-step reasoning", r"\bstep[- ]by[- ]step\b|\bshow (each|your) step|\breason(ing)?\b|\bexplain why\b"),
    ("creative writing", r"\b(story|poem|song|haiku|slogan)\b"),
    ("summarization", r"\bsummar"),
    ("translation", r"\btranslat"),
    ("explanation", r"\bexplain\b|\bwhy\b|\bwhat is\b"),
    ("listing", r"\blist\b|\benumerate\b"),
    (
        "format constraint",
        r"\bno more than\b|\bat most\b|\bnumbered list\b|\bbullet|\bjson\b|\bin \w+ (words|sentences)\b|\bdo not use\b",
    ),
    ("advice", r"\bhow (can|do|should) i\b|\btips?\b|\badvice\b|\bplan\b"),
    ("rewriting", r"\brewrite\b|\bparaphrase\b|\brephrase\b|\bedit\b"),
    ("classification", r"\bclassify\b|\bcategori[sz]e\b"),
    ("brainstorming", r"\bideas\b|\bbrainstorm\b"),
    ("role play", r"\bact as\b|\bpretend\b|\brole[- ]play\b"),
    ("concrete scenario", r"\bfor a\b|\bon a\b|\bin python\b"),
    ("audience adaptation", r"\bfor a (beginner|child|ten-year-old)\b|\bbeginner\b"),
]
_COMPILED = [(t, re.compile(p, re.IGNORECASE | re.MULTILINE)) for t, p in RULES]


def query_text(conv: Conversation) -> str:
    """The user turns, without placeholders or the short-answer suffix."""
    text = "\n".join(m.content for m in conv.messages if m.role == "user")
    return text.replace(SHORT_SUFFIX, "").replace(IMAGE_TOKEN, "").strip()


def heuristic_tags(conv: Conversation) -> list[str]:
    text = query_text(conv)
    tags = [t for t, p in _COMPILED if p.search(text)]
    if conv.images:
        tags.append("visual understanding")
    if sum(m.role == "user" for m in conv.messages) > 1:
        tags.append("multi-turn")
    if SHORT_SUFFIX in "".join(m.content for m in conv.messages):
        tags.append("short answer")
    return tags or ["open question"]


def teacher_tags(
    convs: list[Conversation], teacher: Teacher, journal: Path | None = None, prompts_dir: Path | None = None
) -> tuple[list[list[str] | None], list[dict]]:
    """Tags from a teacher; (tags or None per conversation, rejects with their reasons)."""
    prompt = load_prompt("tag", prompts_dir)
    requests = [Request("tag", few_shot_messages(prompt, query_text(c)), {"query": query_text(c)}) for c in convs]
    tags: list[list[str] | None] = []
    rejects = []
    for conv, reply in zip(convs, complete_all(teacher, requests, journal, desc="tag")):
        try:
            if isinstance(reply, TeacherError):
                raise ParseError(f"teacher error: {reply}")
            tags.append(parse_tags(reply))
        except ParseError as e:
            tags.append(None)
            rejects.append(
                {
                    "id": conv.id,
                    "source": conv.source,
                    "reason": str(e),
                    "reply": None if isinstance(reply, TeacherError) else reply,
                }
            )
    return tags, rejects


def complexity(tags: list[str]) -> int:
    return len(set(tags))


def diversity(tag_lists: list[list[str]]) -> int:
    return len({t for tags in tag_lists for t in tags})


def select(tag_lists: list[list[str]], n: int, seed: int = 0) -> list[int]:
    """Indices of n samples: most complex first, each adding a tag not yet covered (InsTag);
    once no candidate adds a new tag, the rest are filled by complexity. Ties break by seed."""
    rng = random.Random(seed)
    tie = [rng.random() for _ in tag_lists]
    order = sorted(range(len(tag_lists)), key=lambda i: (-complexity(tag_lists[i]), tie[i]))
    chosen: list[int] = []
    covered: set[str] = set()
    for i in order:
        if len(chosen) == n:
            break
        if set(tag_lists[i]) - covered:
            chosen.append(i)
            covered |= set(tag_lists[i])
    taken = set(chosen)
    chosen += [i for i in order if i not in taken][: max(0, n - len(chosen))]
    return chosen
