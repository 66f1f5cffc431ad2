"""Caption-to-instruction generation: scenes -> LLaVA conversations of three kinds.

Each scene yields one record per requested kind: `conversation` (multi-turn Q&A; with
probability `short_fraction` in LLaVA-1.5's single-word VQA style), `detail` (one thorough
description) and `reasoning` (one question needing a comparison, with its justification).
All randomness comes from `seed`, so a rerun asks the very same requests and the journal
replays every reply already paid for.
"""
from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llava_lite.config import ConfigError
from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, DataError, Message
from llava_lite.infer.openai_client import Request, Teacher, TeacherError, complete_all

from .annotations import Scene, vocabulary
from .parse import ParseError, parse_description, parse_qa
from .prompts import few_shot_messages, load_lines, load_prompt
from .teachers.rule import SHORT_SUFFIX

KINDS = ("conversation", "detail", "reasoning")
SHORT_NOTE = "\n\nKeep every answer to a single word or number."  # added to the query for short-answer records


@dataclass
class GenerationResult:
    conversations: list[Conversation]
    rejects: list[dict] = field(default_factory=list)  # {"id", "kind", "image", "reason", "reply"}

    def summary(self) -> dict:
        reasons = Counter(r["reason"][:80] for r in self.rejects)
        return {"records": len(self.conversations), "rejects": len(self.rejects), "reject_reasons": dict(reasons)}


@dataclass
class _Job:
    scene: Scene
    kind: str
    short: bool
    request: Request
    instruction: str = ""  # the user turn for `detail` records


def _jobs(
    scenes: list[Scene], kinds: Sequence[str], short_fraction: float, seed: int, prompts_dir: Path | None,
    per_type: int = 1,
) -> list[_Job]:
    rng = random.Random(seed)
    prompts = {k: load_prompt(k, prompts_dir) for k in kinds}
    detail_questions = load_lines("detail_questions", prompts_dir)
    shapes, colors = vocabulary(scenes)
    jobs = []
    for scene in scenes:
        for kind in kinds:
            short = kind == "conversation" and rng.random() < short_fraction
            query = scene.context() + (SHORT_NOTE if short else "")
            payload = {"objects": scene.objects, "short": short, "shapes": shapes, "colors": colors,
                       "per_type": per_type}
            request = Request(kind, few_shot_messages(prompts[kind], query), payload, seed=rng.randrange(2**31))
            jobs.append(_Job(scene, kind, short, request, rng.choice(detail_questions) if kind == "detail" else ""))
    return jobs


def _record(job: _Job, reply: str) -> Conversation:
    """Raises ParseError when the reply cannot become a record."""
    if job.kind == "detail":
        pairs = [(job.instruction, parse_description(reply))]
    else:
        pairs = parse_qa(reply, max_pairs=1 if job.kind == "reasoning" else None)
        if job.short:
            pairs = [(q if q.endswith(SHORT_SUFFIX) else q + SHORT_SUFFIX, a) for q, a in pairs]
    messages = []
    for i, (q, a) in enumerate(pairs):
        messages += [Message("user", f"{IMAGE_TOKEN}\n{q}" if i == 0 else q), Message("assistant", a)]
    kind = "short" if job.short else job.kind
    return Conversation(messages, images=[job.scene.file_name], id=f"{job.scene.id}-{kind}").validate()


def generate(
    scenes: list[Scene],
    teacher: Teacher,
    kinds: Sequence[str] = KINDS,
    short_fraction: float = 0.0,
    seed: int = 0,
    journal: Path | None = None,
    prompts_dir: Path | None = None,
    per_type: int = 1,
) -> GenerationResult:
    """Ask `teacher` for every (scene, kind) and parse the replies; nothing is dropped silently.
    `per_type`: questions of each type in a rule teacher's conversation record (LLM teachers write
    what their prompt asks for)."""
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ConfigError(f"unknown kinds {sorted(unknown)}; choose from {KINDS}")
    jobs = _jobs(scenes, kinds, short_fraction, seed, prompts_dir, per_type)
    replies = complete_all(teacher, [j.request for j in jobs], journal, desc="generate")
    result = GenerationResult([])
    for job, reply in zip(jobs, replies):
        reject = {"id": f"{job.scene.id}-{job.kind}", "kind": job.kind, "image": job.scene.file_name}
        if isinstance(reply, TeacherError):
            result.rejects.append({**reject, "reason": f"teacher error: {reply}", "reply": None})
            continue
        try:
            result.conversations.append(_record(job, reply))
        except (ParseError, DataError) as e:
            result.rejects.append({**reject, "reason": f"parse: {e}", "reply": reply})
    return result


def write_rejects(rejects: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rejects))
