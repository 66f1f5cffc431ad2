"""InsTag-style tags per sample, complexity (tags per sample), diversity (distinct tags), selection.

Two taggers give the same output shape: a teacher asked with `prompts/tag.yaml`, and a cheap
keyword heuristic that needs nothing. Tags describe the user side of a conversation (what the
request asks for); the answer does not change what skill the request needs.
"""
from __future__ import annotations

import random
from pathlib import Path

from llava_lite.data.conversation import Conversation
from llava_lite.data.tags import heuristic_tags, query_text  # noqa: F401 (re-exported: the tools' tagger)
from llava_lite.infer.openai_client import Request, Teacher, TeacherError, complete_all

from .parse import ParseError, parse_tags
from .prompts import few_shot_messages, load_prompt


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
