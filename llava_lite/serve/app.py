"""The ASGI app: OpenAI-compatible chat completions (plain and streamed), models, health, the page."""
from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from llava_lite.infer.chat import Assistant, Reply
from llava_lite.serve.errors import APIError, api_error_handler, http_error_handler, server_error_handler
from llava_lite.serve.schema import ChatRequest, parse_request, to_prompt
from llava_lite.serve.settings import Settings
from llava_lite.serve.worker import Job, Worker

STATIC = Path(__file__).parent / "static"


def create_app(assistant_or_model_dir: Assistant | str | Path, settings: Settings = Settings()) -> Starlette:
    """An app serving one model. A directory (llava-lite, or llava-hf / LLaVA imported: sources.model_dir) is
    loaded with `LlavaLite.from_pretrained`."""
    if isinstance(assistant_or_model_dir, Assistant):
        assistant, default_name = assistant_or_model_dir, "llava-lite"
    else:
        from llava_lite.interop.sources import model_dir
        from llava_lite.model.llava import LlavaLite

        assistant = Assistant(LlavaLite.from_pretrained(model_dir(assistant_or_model_dir)))
        default_name = Path(assistant_or_model_dir).resolve().name
    model_name = settings.model_name or default_name
    worker = Worker(assistant, settings.default_max_tokens, settings.max_queue)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        worker.start()
        yield
        worker.stop()

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    async def health(_: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": model_name, "queued": worker.jobs.qsize(),
                             "auth": settings.api_key is not None})

    async def models(request: Request) -> JSONResponse:
        authorize(request)
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "llava-lite"}
        return JSONResponse({"object": "list", "data": [card]})

    async def chat_completions(request: Request) -> Response:
        authorize(request)
        req = parse_request(await read_body(request, settings.max_body_bytes))
        prompt = await run_in_threadpool(to_prompt, req, settings)  # decoding images may take a while
        job = Job(id=f"chatcmpl-{uuid.uuid4().hex}", prompt=prompt,
                  max_tokens=req.max_completion_tokens or req.max_tokens,
                  sampling=dict(temperature=req.temperature, top_p=req.top_p, stop=req.stop_list, seed=req.seed),
                  stream=req.stream, loop=asyncio.get_running_loop())
        worker.submit(job)
        try:
            kind, value = await next_event(job, request)  # "start" once the model is ours, or an error
            if req.stream:
                return StreamingResponse(stream(job, req, model_name), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            while kind != "done":
                kind, value = await next_event(job, request)
            return JSONResponse(completion(job.id, model_name, value))
        except BaseException:
            job.cancelled.set()
            raise

    async def page(_: Request) -> FileResponse:
        return FileResponse(STATIC / "index.html")

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/v1/models", models),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    handlers = {APIError: api_error_handler, HTTPException: http_error_handler, Exception: server_error_handler}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes, over the limit of {limit}", code="request_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    return bytes(body)


async def next_event(job: Job, request: Request) -> tuple[str, Any]:
    """The job's next event; raises if it failed, and cancels it if the client disconnects first."""
    get = asyncio.ensure_future(job.events.get())
    gone = asyncio.ensure_future(wait_disconnect(request))
    done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if get not in done:
        get.cancel()
        job.cancelled.set()
        raise APIError(499, "client closed the request")  # nobody reads it; ends the handler cleanly
    kind, value = get.result()
    if kind == "error":
        raise value
    return kind, value


async def wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def stream(job: Job, req: ChatRequest, model_name: str) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, content deltas, a finish chunk, [a usage chunk,] then [DONE].
    Starlette cancels this generator when the client disconnects; `finally` then stops the job."""
    def event(choices: list[dict], **extra: Any) -> str:
        body = {"id": job.id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model_name,
                "choices": choices, **extra}
        return f"data: {json.dumps(body)}\n\n"

    def delta(content: dict, finish: str | None = None) -> str:
        return event([{"index": 0, "delta": content, "logprobs": None, "finish_reason": finish}])

    try:
        yield delta({"role": "assistant", "content": ""})
        while True:
            kind, value = await job.events.get()
            if kind == "text":
                yield delta({"content": value})
            elif kind == "error":  # headers are sent: report the error in the stream, as vLLM does
                yield f"data: {json.dumps(value.body())}\n\n"
                break
            else:
                yield delta({}, value.finish_reason)
                if req.stream_options and req.stream_options.include_usage:
                    yield event([], usage=usage(value))
                break
        yield "data: [DONE]\n\n"
    finally:
        job.cancelled.set()


def usage(reply: Reply) -> dict[str, int]:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def completion(job_id: str, model_name: str, reply: Reply) -> dict[str, Any]:
    choice = {"index": 0, "message": {"role": "assistant", "content": reply.text}, "logprobs": None,
              "finish_reason": reply.finish_reason}
    return {"id": job_id, "object": "chat.completion", "created": int(time.time()), "model": model_name,
            "choices": [choice], "usage": usage(reply)}
