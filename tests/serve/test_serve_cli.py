"""`llava-lite serve` from the command line: arguments, defaults, and a real process serving a
model directory to the openai client and to plain HTTP (what curl sends and sees)."""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time

import openai
import pytest
from helpers.server import direct

from llava_lite.cli import build_parser
from llava_lite.serve.cli import run, settings_from
from llava_lite.serve.settings import MiB


def test_without_the_serve_extra_one_line_says_how_to_install(monkeypatch):
    """starlette, uvicorn and pydantic are the [serve] extra; without them serve exits with one line."""
    import pytest

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    args = build_parser().parse_args(["serve", "--model", "runs/demo/stage2"])
    with pytest.raises(SystemExit) as e:
        args.func(args)
    assert str(e.value) == ("error: llava-lite serve needs uvicorn, which is not installed; install the serve extra: "
                            "pip install 'llava-lite[serve]'")


def test_arguments_and_defaults(monkeypatch):
    monkeypatch.setenv("LLAVA_LITE_API_KEY", "from-env")
    args = build_parser().parse_args(["serve", "--model", "runs/demo/stage2", "--max-image-mb", "2",
                                      "--allow-remote-images", "images.example.org", "cdn.example.org"])
    assert args.func is run and (args.host, args.port) == ("127.0.0.1", 8000)
    s = settings_from(args)
    assert s.api_key == "from-env" and s.model_name == "stage2" and s.max_image_bytes == 2 * MiB
    assert s.allow_remote_images == ("images.example.org", "cdn.example.org")
    monkeypatch.delenv("LLAVA_LITE_API_KEY")
    s = settings_from(build_parser().parse_args(["serve", "--model", "m", "--model-name", "mine"]))
    assert s.api_key is None and s.allow_remote_images == () and s.model_name == "mine"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # a real `python -m llava_lite.serve` process
def test_serve_process(serve_model_dir, assistant):
    port = free_port()
    env = {**os.environ, "LLAVA_LITE_API_KEY": "k"}
    cmd = [sys.executable, "-m", "llava_lite.serve", "--model", str(serve_model_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else "timeout"
            try:
                conn.request("GET", "/health")
                break
            except OSError:
                conn.close()
                time.sleep(0.2)
        health = {"status": "ok", "model": "serve-model", "queued": 0, "auth": True}
        assert json.loads(conn.getresponse().read()) == health

        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0)
        want = direct(assistant, [("user", "Hi")], max_new_tokens=8)
        out = client.chat.completions.create(model="serve-model", messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=8, temperature=0)
        assert out.choices[0].message.content == want.text

        # curl -N http://127.0.0.1:PORT/v1/chat/completions -H "Authorization: Bearer k" -d '{... "stream": true}'
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "temperature": 0, "stream": True}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Authorization": "Bearer k"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("content-type").startswith("text/event-stream")
        events = [line for line in resp.read().decode().split("\n\n") if line]
        assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
        chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == want.text
    finally:
        proc.terminate()
        proc.wait(timeout=20)
