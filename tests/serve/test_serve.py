"""`llava-lite serve` through the official openai client, against uvicorn on 127.0.0.1.

"Answered correctly" means: the same text and token counts as `Assistant.reply` gives directly for
the same messages and sampling settings (greedy, or sampling with a fixed seed). The tiny model and its
Assistant are fixtures of tests/conftest.py; LiveServer and the request builders are in helpers/server.py.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from helpers.server import LiveServer, direct, image_part, png

from llava_lite.infer.chat import Assistant, Reply
from llava_lite.model.llava import LlavaLite
from llava_lite.serve import Settings, create_app


@pytest.fixture(scope="module")
def server(assistant):
    with LiveServer(create_app(assistant, Settings(model_name="tiny-llava"))) as live:
        yield live


@pytest.fixture()
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def test_health_models_and_page(server, client):
    conn = http.client.HTTPConnection("127.0.0.1", server.port)
    conn.request("GET", "/health")
    assert conn.getresponse().read().startswith(b'{"status":"ok"')
    assert [m.id for m in client.models.list()] == ["tiny-llava"]
    for path, needle in [("/", b"/static/chat.js"), ("/static/chat.js", b"/v1/chat/completions")]:
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200 and needle in resp.read()


def test_image_and_text(client, assistant):
    want = direct(assistant, [("user", "What is in the picture?")], [png("blue")], max_new_tokens=12)
    content = [image_part(png("blue")), {"type": "text", "text": "What is in the picture?"}]
    out = client.chat.completions.create(model="tiny-llava", max_tokens=12, temperature=0,
                                         messages=[{"role": "user", "content": content}])
    assert out.choices[0].message.content == want.text
    assert out.choices[0].finish_reason == want.finish_reason
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (want.prompt_tokens, want.completion_tokens)
    assert out.usage.total_tokens == want.prompt_tokens + want.completion_tokens


@pytest.mark.parametrize("fmt, mime", [("JPEG", "image/jpeg"), ("WEBP", "image/webp")])
def test_jpeg_and_webp(client, assistant, fmt, mime):
    data = png("purple", (40, 30), fmt)
    want = direct(assistant, [("user", "What is it?")], [data], max_new_tokens=8)
    out = client.chat.completions.create(model="m", max_tokens=8, temperature=0, messages=[
        {"role": "user", "content": [image_part(data, mime), {"type": "text", "text": "What is it?"}]}])
    assert out.choices[0].message.content == want.text


def test_streaming_matches(client, assistant):
    want = direct(assistant, [("user", "Describe it.")], [png("green")], max_new_tokens=20)
    chunks = list(client.chat.completions.create(
        model="tiny-llava", max_tokens=20, temperature=0, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": [image_part(png("green")), {"type": "text", "text": "Describe it."}]}],
    ))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 1 and "".join(deltas) == want.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.finish_reason
    assert chunks[-1].usage.completion_tokens == want.completion_tokens
    assert len({c.id for c in chunks}) == 1


def test_text_only_and_multi_turn(client, assistant):
    want = direct(assistant, [("user", "Add 2 and 3.")], max_new_tokens=10)
    out = client.chat.completions.create(model="m", max_tokens=10, temperature=0,
                                         messages=[{"role": "user", "content": "Add 2 and 3."}])
    assert out.choices[0].message.content == want.text

    turns = [("system", "You are terse."), ("user", "What colour is it?"), ("assistant", "It is red."),
             ("user", "How many objects are there?")]
    want = direct(assistant, turns, [png("red")], max_new_tokens=10)
    messages = [{"role": role, "content": text} for role, text in turns]
    messages[1]["content"] = [image_part(png("red")), {"type": "text", "text": "What colour is it?"}]
    out = client.chat.completions.create(model="m", max_tokens=10, temperature=0, messages=messages)
    assert out.choices[0].message.content == want.text
    assert out.usage.prompt_tokens == want.prompt_tokens


def test_sampling_seed_and_stop(client, assistant):
    ask = [{"role": "user", "content": "Say something."}]
    want = direct(assistant, [("user", "Say something.")], max_new_tokens=16, temperature=0.9, top_p=0.8, seed=7)
    out = client.chat.completions.create(model="m", messages=ask, max_tokens=16, temperature=0.9, top_p=0.8, seed=7)
    assert out.choices[0].message.content == want.text

    greedy = direct(assistant, [("user", "Say something.")], max_new_tokens=16).text
    stop = greedy[4:7]
    assert len(stop) == 3
    want = direct(assistant, [("user", "Say something.")], max_new_tokens=16, stop=[stop])
    out = client.chat.completions.create(model="m", messages=ask, max_tokens=16, temperature=0, stop=stop)
    assert out.choices[0].message.content == want.text == greedy[: greedy.find(stop)]
    assert out.choices[0].finish_reason == "stop"


def test_twenty_concurrent_requests(client, assistant):
    colors = ["red", "green", "blue", "yellow", "purple"]

    def case(i: int) -> dict:
        images = [png(colors[i % 5], (32 + i, 32))] if i % 3 else []
        return dict(text=f"Question {i}: what do you see?", images=images, stream=i % 2 == 0,
                    sampling=dict(temperature=0.8, seed=i) if i % 4 == 1 else dict(temperature=0.0))

    cases = [case(i) for i in range(20)]
    wants = [direct(assistant, [("user", c["text"])], c["images"], max_new_tokens=12,
                    **c["sampling"]).text for c in cases]

    def ask(c: dict) -> str:
        content = [image_part(b) for b in c["images"]] + [{"type": "text", "text": c["text"]}]
        kw = dict(model="m", max_tokens=12, messages=[{"role": "user", "content": content}], **c["sampling"])
        if not c["stream"]:
            return client.chat.completions.create(**kw).choices[0].message.content
        return "".join(ch.choices[0].delta.content or "" for ch in client.chat.completions.create(stream=True, **kw))

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(ask, cases)) == wants


def test_api_key(assistant):
    with LiveServer(create_app(assistant, Settings(api_key="sekret"))) as live:
        ask = dict(model="m", max_tokens=2, messages=[{"role": "user", "content": "Hi"}])
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{live.url}/v1", api_key="wrong", max_retries=0).chat.completions.create(**ask)
        good = openai.OpenAI(base_url=f"{live.url}/v1", api_key="sekret", max_retries=0)
        assert good.chat.completions.create(**ask).usage.completion_tokens <= 2
        conn = http.client.HTTPConnection("127.0.0.1", live.port)
        conn.request("GET", "/health")  # health and the page stay open
        assert conn.getresponse().status == 200


class SlowAssistant(Assistant):
    """Sleeps 10 ms per token and records each Reply, to see a generation stop early."""

    def __init__(self, model: LlavaLite) -> None:
        super().__init__(model)
        self.replies: list[Reply] = []

    def reply(self, *args, should_stop=None, **kw) -> Reply:
        def slow_stop() -> bool:
            time.sleep(0.01)
            return should_stop()

        self.replies.append(super().reply(*args, should_stop=slow_stop, **kw))
        return self.replies[-1]


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_cancels_generation(assistant, stream):
    ask = "Tell me a long story."
    assert direct(assistant, [("user", ask)], max_new_tokens=400).completion_tokens == 400  # runs the full 4 s
    slow = SlowAssistant(assistant.model)
    with LiveServer(create_app(slow, Settings())) as live:
        conn = http.client.HTTPConnection("127.0.0.1", live.port)
        body = {"messages": [{"role": "user", "content": ask}], "max_tokens": 400, "temperature": 0, "stream": stream}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        if stream:
            resp = conn.getresponse()
            assert resp.status == 200 and resp.readline().startswith(b"data: ")
        else:
            time.sleep(0.3)
        conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-generation
        conn.close()
        deadline = time.monotonic() + 5
        while not slow.replies and time.monotonic() < deadline:
            time.sleep(0.02)
    assert slow.replies and slow.replies[0].completion_tokens < 100
