"""Instruction-set expansion, Self-Instruct / Evol-Instruct style.

Each round draws parents from the pool (seeds + accepted so far) and an operation: `variation`
(a new instruction in the spirit of a few pool samples), Evol-Instruct's in-depth rewrites
(`constraint`, `deepen`, `concretize`, `reasoning`) or its in-breadth `breadth`. Replies are
filtered (length, keywords, ROUGE-L > 0.7 against the pool) and every reject is kept with
its reason. All choices come from `seed`; with the reply journal a rerun replays for free.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from llava_lite.config import ConfigError
from llava_lite.data.readers import read_conversations
from llava_lite.infer.openai_client import Request, Teacher, TeacherError, complete_all

from .filters import InstructionFilter, normalize
from .parse import ParseError, parse_instruction
from .prompts import few_shot_messages, load_prompt
from .tagging import query_text

OPERATIONS = ("variation", "breadth", "constraint", "deepen", "concretize", "reasoning")


@dataclass
class ExpansionResult:
    instructions: list[dict] = field(default_factory=list)  # {"instruction", "operation", "parent"}
    rejects: list[dict] = field(default_factory=list)  # {"operation", "parent", "reason", "reply"}


def load_seed_instructions(path: Path) -> list[str]:
    """A `.txt` (one per line), a JSON list of strings, or any conversation file (its user turns)."""
    path = Path(path)
    if path.suffix == ".txt":
        return [l.strip() for l in path.read_text().splitlines() if l.strip()]
    data = json.loads(path.read_text()) if path.suffix == ".json" else None
    if isinstance(data, list) and all(isinstance(x, str) for x in data):
        return [x.strip() for x in data if x.strip()]
    return [query_text(c) for c in read_conversations(path)]


def _request(op: str, parent: str, pool: list[str], prompt: dict, rng: random.Random) -> Request:
    examples = "\n".join(f"- {x}" for x in rng.sample(pool, min(3, len(pool))))
    query = prompt["operations"][op].format(instruction=parent, examples=examples)
    return Request(
        "expand", few_shot_messages(prompt, query), {"instruction": parent, "operation": op}, seed=rng.randrange(2**31)
    )


def expand(
    seeds: list[str],
    teacher: Teacher,
    n_new: int,
    seed: int = 0,
    operations: tuple[str, ...] = OPERATIONS,
    batch: int = 8,
    max_rounds: int | None = None,
    journal: Path | None = None,
    prompts_dir: Path | None = None,
    filt: InstructionFilter | None = None,
) -> ExpansionResult:
    """Grow `seeds` by up to `n_new` filtered instructions (fewer if `max_rounds` runs out)."""
    bad = set(operations) - set(OPERATIONS)
    if bad or not seeds:
        raise ConfigError(f"need seed instructions and operations from {OPERATIONS}; got unknown {sorted(bad)}")
    rng, prompt = random.Random(seed), load_prompt("expand", prompts_dir)
    filt = filt or InstructionFilter()
    for s in seeds:
        filt.add(s)  # seeds are the pool new instructions must differ from
    result = ExpansionResult()
    rounds = max_rounds if max_rounds is not None else 5 * (n_new // batch + 1)
    with tqdm(total=n_new, desc=f"expand ({teacher.name})", leave=False) as bar:
        for _ in range(rounds):
            if len(result.instructions) >= n_new:
                break
            jobs = [(rng.choice(operations), rng.choice(filt.pool)) for _ in range(batch)]
            requests = [_request(op, parent, filt.pool, prompt, rng) for op, parent in jobs]
            for (op, parent), reply in zip(jobs, complete_all(teacher, requests, journal, progress=False)):
                try:
                    if isinstance(reply, TeacherError):
                        raise ParseError(f"teacher error: {reply}")
                    text = normalize(parse_instruction(reply))
                    reason = filt.reason(text)
                    if reason:
                        raise ParseError(reason)
                except ParseError as e:
                    result.rejects.append(
                        {
                            "operation": op,
                            "parent": parent,
                            "reason": str(e),
                            "reply": reply if isinstance(reply, str) else None,
                        }
                    )
                    continue
                if len(result.instructions) < n_new:
                    filt.add(text)
                    result.instructions.append({"instruction": text, "operation": op, "parent": parent})
                    bar.update()
    return result


def answer_instructions(
    instructions: list[str], teacher: Teacher, journal: Path | None = None
) -> tuple[list[dict], list[dict]]:
    """Ask the teacher to answer each instruction: (Alpaca records, rejects)."""
    system = {"role": "system", "content": "You are a helpful, accurate assistant. Answer the request."}
    requests = [Request("answer", [system, {"role": "user", "content": q}], {"instruction": q}) for q in instructions]
    records, rejects = [], []
    for q, reply in zip(instructions, complete_all(teacher, requests, journal, desc="answer")):
        if isinstance(reply, str) and reply.strip():
            records.append({"instruction": q, "input": "", "output": reply.strip()})
        else:
            rejects.append(
                {
                    "instruction": q,
                    "reason": f"teacher error: {reply}" if isinstance(reply, TeacherError) else "empty answer",
                }
            )
    return records, rejects
