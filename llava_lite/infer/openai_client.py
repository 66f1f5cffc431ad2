"""Asking a chat model many things at once: one interface, the runner, and the OpenAI-compatible client.

Every teacher or judge (an OpenAI-compatible endpoint, a local transformers LM, the offline rule
teacher) answers a `Request` with reply text. LLM teachers read `messages`; the rule teacher
reads the structured `payload` the messages were rendered from, so both go through the same
reply parser. `complete_all` adds concurrency, a progress bar and a reply journal: each paid
reply is appended to a JSONL file as soon as it arrives, so a rerun replays finished requests
from the journal instead of paying for them again. `llava-lite eval --judge` and the data tools'
teachers (`llava-lite data`) both use this module.

`OpenAITeacher`: any OpenAI-compatible chat-completions endpoint, via the official client. Base
URL, model and key come from the environment (OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_API_KEY), so
no secret is ever on a command line. Retries (429, 5xx, connection errors) back off exponentially
with jitter, honouring Retry-After; a shared limiter spaces request starts to stay under
`requests_per_minute`; `concurrency` bounds requests in flight. The reply length limit is sent as
`max_completion_tokens` (what current OpenAI models require; they reject `max_tokens`). An older
OpenAI-compatible server that rejects that name (a 400/422 naming it) is asked again with
`max_tokens`, once, and from then on. `token_param` (or OPENAI_TOKEN_PARAM) =
"max_completion_tokens" or "max_tokens" fixes the name instead of "auto".
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import openai
from tqdm import tqdm

from llava_lite.config import ConfigError


@dataclass
class Request:
    task: str  # "conversation" | "detail" | "reasoning" | "expand" | "tag" | "judge-single" | "judge-pair"
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
        with tqdm(
            total=len(todo), desc=f"{desc} ({teacher.name})", disable=not (todo and progress), leave=False
        ) as bar:
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


RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, openai.APITimeoutError)
TOKEN_PARAMS = ("auto", "max_completion_tokens", "max_tokens")


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart, across threads."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.next_start = 0.0
        self.lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        time.sleep(max(0.0, start - now))


class OpenAITeacher:
    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        concurrency: int = 4,
        requests_per_minute: float | None = None,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        temperature: float = 0.7,
        max_tokens: int = 1024,
        timeout: float = 120.0,
        token_param: str | None = None,  # "auto" (default), "max_completion_tokens" or "max_tokens"
    ) -> None:
        self.model = model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise ConfigError("no model: pass model= or set OPENAI_MODEL")
        self.name = f"openai:{self.model}"
        self.concurrency = concurrency
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
        token_param = token_param or os.environ.get("OPENAI_TOKEN_PARAM") or "auto"
        if token_param not in TOKEN_PARAMS:
            raise ConfigError(f"token_param (or OPENAI_TOKEN_PARAM) must be one of {TOKEN_PARAMS}, got {token_param!r}")
        self.token_param = "max_completion_tokens" if token_param == "auto" else token_param
        self.fallback = token_param == "auto"  # may still switch to max_tokens for an older server
        self.limiter = RateLimiter(requests_per_minute)
        # The client's own retries are off: ours count attempts, space them and share the rate limit.
        self.client = openai.OpenAI(
            base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "unused",  # local servers often need none
            max_retries=0,
            timeout=timeout,
        )

    def _delay(self, attempt: int, error: Exception) -> float:
        response = getattr(error, "response", None)
        after = response.headers.get("retry-after") if response is not None else None
        if after:
            try:
                return min(float(after), self.max_backoff)
            except ValueError:
                pass  # an HTTP-date Retry-After: fall back to our own schedule
        return min(self.backoff * 2**attempt, self.max_backoff) * (0.5 + random.random() / 2)

    def _rejects_token_param(self, error: Exception, param: str) -> bool:
        """An older server refusing `max_completion_tokens` (400 or 422 that names it)."""
        refused = isinstance(error, (openai.BadRequestError, openai.UnprocessableEntityError))
        return self.fallback and param == "max_completion_tokens" and refused and param in str(error)

    def complete(self, request: Request) -> str:
        attempt = 0
        while True:
            self.limiter.wait()
            param = self.token_param
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=request.messages,
                    temperature=self.temperature,
                    seed=request.seed,
                    **{param: self.max_tokens},
                )
            except RETRYABLE as e:
                if attempt == self.max_retries:
                    raise TeacherError(f"gave up after {attempt + 1} attempts: {type(e).__name__}: {e}") from e
                time.sleep(self._delay(attempt, e))
                attempt += 1
                continue
            except openai.APIStatusError as e:  # 400, 401, 404...: retrying cannot help
                if self._rejects_token_param(e, param):
                    self.token_param = "max_tokens"  # for this and every later request (all threads)
                    continue  # the same request with the older name; not a retry
                raise TeacherError(f"{type(e).__name__}: {e}") from e
            text = response.choices[0].message.content if response.choices else None
            if not text:
                raise TeacherError("the endpoint returned no message text")
            return text
