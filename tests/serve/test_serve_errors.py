"""Malformed requests and limits: every refusal is a 4xx in OpenAI's error shape, before any generation."""
from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
import os
import struct
import threading
import zlib

import openai
import pytest
from helpers.server import LiveServer, data_url, png
from PIL import Image

from llava_lite.serve import Settings, create_app

LIMITS = Settings(max_body_bytes=300_000, max_image_bytes=100_000, max_image_pixels=1_000_000, max_images=2,
                  allow_remote_images=("127.0.0.1",))


class Images(http.server.BaseHTTPRequestHandler):
    """/red.png is an image; /moved redirects to it (redirects are never followed)."""

    def do_GET(self) -> None:
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/red.png")
            self.end_headers()
            return
        body = png("red")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def image_host():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


@pytest.fixture(scope="module")
def server(assistant):
    with LiveServer(create_app(assistant, LIMITS)) as live:
        yield live


def post(server, body: dict | bytes, path: str = "/v1/chat/completions", method: str = "POST") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(method, path, raw, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def with_image(url: str, text: str = "What is it?") -> dict:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": content}]}


def forged_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb's signature."""
    data = bytearray(png("red", (4, 4)))
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)


def image_bytes(fmt: str, size=(48, 40), noise: bool = False) -> bytes:
    img = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)) if noise else Image.new("RGB", size, "blue")
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def hello(role: str = "user", content: object = "Hi", **extra) -> dict:
    return {"model": "m", "max_tokens": 4, "messages": [{"role": role, "content": content}], **extra}


B64 = base64.b64encode
CASES = {
    "invalid json": (b"{not json", 400, None),
    "missing messages": ({"model": "m"}, 400, None),
    "empty messages": ({"model": "m", "messages": []}, 400, None),
    "unknown role": (hello(role="bot"), 400, None),
    "tool role": (hello(role="tool"), 400, None),
    "content not text": (hello(content=42), 400, None),
    "unknown part type": (hello(content=[{"type": "input_audio", "input_audio": {}}]), 400, None),
    "n > 1": (hello(n=2), 400, None),
    "temperature out of range": (hello(temperature=3), 400, None),
    "last turn not user": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
                           400, None),
    "system not first": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "system", "content": "x"}]},
                         400, None),
    "placeholder in text": (hello(content="look: <image>"), 400, None),
    "image in assistant turn": ({"messages": [with_image(data_url(png()))["messages"][0] | {"role": "assistant"},
                                              {"role": "user", "content": "Hi"}]}, 400, None),
    "context exceeded": (hello(max_tokens=100_000), 400, "context_length_exceeded"),
    "context exceeded, streaming": (hello(max_tokens=100_000, stream=True), 400, "context_length_exceeded"),
    "prompt alone over context": ({"messages": [{"role": "user", "content": "blue square " * 600}]}, 400,
                                  "context_length_exceeded"),
    "seed out of range": (hello(seed=2**64), 400, None),
    "bad base64": (with_image("data:image/png;base64,@@not-base64@@"), 400, "invalid_image_url"),
    "data url not base64": (with_image("data:image/png,rawbytes"), 400, "invalid_image_url"),
    "not an image": (with_image(data_url(b"hello, I am not a PNG")), 400, "invalid_image"),
    "gif not accepted": (with_image(data_url(image_bytes("GIF"), "image/gif")), 400, "invalid_image"),
    "truncated png": (with_image(data_url(png()[:60])), 400, "invalid_image"),
    "oversized image bytes": (with_image(data_url(image_bytes("PNG", (200, 200), noise=True))), 413, "image_too_large"),
    "too many pixels": (with_image(data_url(png("red", (1100, 1000)))), 413, "image_too_large"),
    "decompression bomb": (with_image(data_url(forged_png(30_000, 30_000))), 413, "image_too_large"),
    "bomb under pillow's limit": (with_image(data_url(forged_png(5_000, 5_000))), 413, "image_too_large"),
    "too many images": ({"messages": [{"role": "user", "content": [with_image(data_url(png()))["messages"][0]
                                                                   ["content"][0]] * 3}]}, 400, "too_many_images"),
    "body too large": (hello(content="x" * 400_000), 413, "request_too_large"),
    "local path": (with_image("/etc/passwd"), 400, "image_url_not_allowed"),
    "file url": (with_image("file:///etc/passwd"), 400, "image_url_not_allowed"),
    "host not allowed": (with_image("http://localhost/red.png"), 400, "image_url_not_allowed"),
}


@pytest.mark.parametrize("name", CASES)
def test_malformed_request_is_refused(server, name):
    body, status, code = CASES[name]
    got, out = post(server, body)
    assert got == status, out
    err = out["error"]
    assert err["message"] and err["type"] == "invalid_request_error" and err["code"] == code


def test_unknown_route_and_method(server):
    assert post(server, b"", "/v1/completions")[1]["error"]["type"] == "not_found_error"
    status, out = post(server, b"", "/v1/chat/completions", method="GET")
    assert status == 405 and out["error"]["message"]


def test_openai_client_sees_the_message(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError, match="messages.0.role"):
        client.chat.completions.create(model="m", messages=[{"role": "bot", "content": "Hi"}])


def test_remote_images_only_from_allowed_hosts_without_redirects(server, image_host):
    status, out = post(server, with_image(f"http://127.0.0.1:{image_host}/red.png") | {"temperature": 0})
    assert status == 200
    assert out["choices"][0]["message"]["content"] == post(server, with_image(data_url(png("red"))) |
                                                           {"temperature": 0})[1]["choices"][0]["message"]["content"]
    status, out = post(server, with_image(f"http://127.0.0.1:{image_host}/moved"))
    assert status == 400 and out["error"]["code"] == "image_fetch_failed"


def test_remote_images_are_off_by_default(assistant):
    with LiveServer(create_app(assistant, Settings())) as live:
        status, out = post(live, with_image("http://127.0.0.1:9/red.png"))
    assert status == 400 and "only base64 data: image URLs" in out["error"]["message"]
