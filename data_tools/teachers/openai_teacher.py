"""A teacher behind any OpenAI-compatible chat-completions endpoint, via the official client.

Base URL, model and key come from the environment (OPENAI_BASE_URL, OPENAI_MODEL,
OPENAI_API_KEY), so no secret is ever on a command line. Retries (429, 5xx, connection
errors) back off exponentially with jitter, honouring Retry-After; a shared limiter spaces
request starts to stay under `requests_per_minute`; `concurrency` bounds requests in flight.
"""
from __future__ import annotations

import os
import random
import threading
import time

import openai

from .base import Request, TeacherError

RETRYABLE = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError, openai.APITimeoutError)


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
    ) -> None:
        self.model = model or os.environ.get("OPENAI_MODEL")
        if not self.model:
            raise ValueError("no model: pass model= or set OPENAI_MODEL")
        self.name = f"openai:{self.model}"
        self.concurrency = concurrency
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.temperature, self.max_tokens = temperature, max_tokens
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

    def complete(self, request: Request) -> str:
        for attempt in range(self.max_retries + 1):
            self.limiter.wait()
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=request.messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    seed=request.seed,
                )
            except RETRYABLE as e:
                if attempt == self.max_retries:
                    raise TeacherError(f"gave up after {attempt + 1} attempts: {type(e).__name__}: {e}") from e
                time.sleep(self._delay(attempt, e))
                continue
            except openai.APIStatusError as e:  # 400, 401, 404...: retrying cannot help
                raise TeacherError(f"{type(e).__name__}: {e}") from e
            text = response.choices[0].message.content if response.choices else None
            if not text:
                raise TeacherError("the endpoint returned no message text")
            return text
        raise AssertionError("unreachable")
