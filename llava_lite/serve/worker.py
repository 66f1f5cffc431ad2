"""One thread owns the model; requests wait in a queue and run one at a time.

Each `Job` carries its own asyncio queue: the worker thread pushes events into it with
`loop.call_soon_threadsafe` ("start" when generation begins, "text" deltas when streaming, then
"done" with the Reply or "error"). Cancelling a job (the client went away) sets a flag that the
generation loop reads through `should_stop`, or makes the worker skip it if it has not started.
"""
from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

from llava_lite.infer.chat import Assistant
from llava_lite.log import logger
from llava_lite.serve.errors import APIError
from llava_lite.serve.schema import Prompt

log = logger.getChild("serve")


@dataclass
class Job:
    id: str
    prompt: Prompt
    max_tokens: int | None  # None: the server default, cut to the context left
    sampling: dict[str, Any]  # temperature, top_p, stop, seed: passed to Assistant.reply
    stream: bool
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, kind: str, value: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the event loop is closed: the server is shutting down
            self.cancelled.set()


class Worker:
    def __init__(self, assistant: Assistant, default_max_tokens: int, max_queue: int) -> None:
        self.assistant = assistant
        self.default_max_tokens = default_max_tokens
        self.context: int | None = getattr(getattr(assistant.model.lm, "config", None), "max_position_embeddings", None)
        self.jobs: queue.Queue[Job | None] = queue.Queue(max_queue)
        self.thread = threading.Thread(target=self._run, name="llava-lite-serve", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise APIError(503, f"server busy: {self.jobs.maxsize} requests already waiting; retry later",
                           code="server_busy") from None

    def _run(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            try:
                self._generate(job)
            except APIError as e:
                job.emit("error", e)
            except Exception as e:
                log.exception("%s failed", job.id)
                job.emit("error", APIError(500, f"generation failed: {type(e).__name__}: {e}"))

    def _budget(self, job: Job) -> int:
        """max_new_tokens for this job: what was asked for (or the default), if the context has room.
        Counting the prompt encodes it once more than `reply` does: cheap next to generating."""
        try:
            ids = self.assistant.encode(job.prompt.messages, job.prompt.images)[0]
        except ValueError as e:
            raise APIError(400, str(e), "messages") from None
        if self.context is None:
            return job.max_tokens or self.default_max_tokens
        prompt, left = ids.shape[1], self.context - ids.shape[1]
        asked = job.max_tokens or min(self.default_max_tokens, left)
        if left < 1 or asked > left:
            raise APIError(400, f"the prompt is {prompt} tokens, which leaves room for {max(left, 0)} of the "
                           f"{asked} tokens asked for in the model's context of {self.context}", "max_tokens",
                           "context_length_exceeded")
        return asked

    def _generate(self, job: Job) -> None:
        max_new = self._budget(job)
        job.emit("start")
        reply = self.assistant.reply(
            job.prompt.messages, job.prompt.images, max_new_tokens=max_new, **job.sampling,
            on_text=(lambda text: job.emit("text", text)) if job.stream else None,
            should_stop=job.cancelled.is_set,
        )
        state = "cancelled" if job.cancelled.is_set() else reply.finish_reason
        log.info("%s: %d prompt + %d completion tokens, %s", job.id, reply.prompt_tokens, reply.completion_tokens,
                 state)
        job.emit("done", reply)
