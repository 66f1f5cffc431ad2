"""The one teacher interface, and the runner that asks a teacher many things at once.

Every teacher (an OpenAI-compatible endpoint, a local transformers LM, the offline rule
teacher) answers a `Request` with reply text. LLM teachers read `messages`; the rule teacher
reads the structured `payload` the messages were rendered from, so both go through the same
reply parser. `complete_all` adds concurrency, a progress bar and a reply journal: each paid
reply is appended to a JSONL file as soon as it arrives, so a rerun replays finished requests
from the journal instead of paying for them again.
"""
from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm


@dataclass
class Request:
    task: str  # "conversation" | "detail" | "reasoning" | "expand" | "tag"
    messages: list[dict[str, str]]  # OpenAI chat messages: system, few-shot turns, the query
    payload: dict[str, Any] = field(default_factory=dict)  # structured input (scene, instruction...)
    seed: int = 0  # lets a sampling teacher be reproducible per request


class Teacher(Protocol):
    name: str  # identifies the model in journal keys: a different model must not replay old replies
    concurrency: int  # how many requests may be in flight at once

    def complete(self, request: Request) -> str: ...


class TeacherError(RuntimeError):
    """A request the teacher could not answer (retries exhausted, bad response)."""


def request_key(teacher: Teacher, request: Request) -> str:
    blob = json.dumps([teacher.name, request.task, request.messages, request.seed], sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def load_journal(path: Path | None) -> dict[str, str]:
    """Replies already paid for, by request key. A torn last line (killed mid-write) is ignored."""
    done: dict[str, str] = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[row["key"]] = row["reply"]
    return done


def complete_all(
    teacher: Teacher, requests: list[Request], journal: Path | None = None, desc: str = "teacher", progress: bool = True
) -> list[str | TeacherError]:
    """Answer every request, in order; a failed request yields its TeacherError instead of text.

    Replies found in `journal` are reused; new ones are appended to it as they arrive."""
    cached = load_journal(journal)
    keys = [request_key(teacher, r) for r in requests]
    out: list[str | TeacherError | None] = [cached.get(k) for k in keys]
    todo = [i for i, r in enumerate(out) if r is None]
    lock = threading.Lock()
    sink = None
    if journal is not None:
        journal.parent.mkdir(parents=True, exist_ok=True)
        torn = journal.exists() and journal.stat().st_size and not journal.read_bytes().endswith(b"\n")
        sink = journal.open("a")
        if torn:  # start on a fresh line so the next reply is not glued to a half-written one
            sink.write("\n")

    def one(i: int) -> None:
        try:
            reply: str | TeacherError = teacher.complete(requests[i])
        except Exception as e:  # any failure of one request must not lose the others' paid replies
            reply = e if isinstance(e, TeacherError) else TeacherError(f"{type(e).__name__}: {e}")
        out[i] = reply
        if sink is not None and isinstance(reply, str):
            with lock:
                sink.write(json.dumps({"key": keys[i], "reply": reply}) + "\n")
                sink.flush()

    try:
        with tqdm(total=len(todo), desc=f"{desc} ({teacher.name})", disable=not (todo and progress), leave=False) as bar:
            if teacher.concurrency <= 1:
                for i in todo:
                    one(i)
                    bar.update()
            else:
                with ThreadPoolExecutor(teacher.concurrency) as pool:
                    for f in as_completed([pool.submit(one, i) for i in todo]):
                        f.result()
                        bar.update()
    finally:
        if sink is not None:
            sink.close()
    return out  # type: ignore[return-value]
