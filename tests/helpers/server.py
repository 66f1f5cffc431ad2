"""A live `llava-lite serve` app for tests (uvicorn in a thread on 127.0.0.1), the Assistant behind it,
and the builders of requests and of the answers expected for them."""
from __future__ import annotations

import base64
import functools
import io
import threading
import time
from pathlib import Path

import uvicorn
from PIL import Image

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Message
from llava_lite.infer.chat import Assistant, Reply
from llava_lite.model.llava import LlavaLite

KEY = "teacher-key"  # the API key of the served teacher / judge


class LiveServer:
    """uvicorn serving `app` in a thread, on a free port of 127.0.0.1."""

    def __init__(self, app) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@functools.cache
def load_assistant(model_dir: Path) -> Assistant:
    return Assistant(LlavaLite.from_pretrained(model_dir))


def png(color: str = "red", size: tuple[int, int] = (48, 40), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes, mime: str = "image/png") -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data, mime)}}


def direct(assistant: Assistant, turns: list[tuple[str, str]], images: list[bytes] = (), **kw) -> Reply:
    """Assistant.reply for the same conversation: (role, text) turns; images go first in the first user turn."""
    messages = [Message(role, text) for role, text in turns]
    first_user = next(i for i, m in enumerate(messages) if m.role == "user")
    messages[first_user].content = "\n".join([IMAGE_TOKEN] * len(images) + [messages[first_user].content])
    return assistant.reply(messages, [Image.open(io.BytesIO(b)) for b in images], **kw)
