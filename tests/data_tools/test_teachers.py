"""Teachers behind the one interface: the OpenAI-compatible teacher against a real HTTP server on
127.0.0.1 (retries, rate limit, concurrency, resume without paying twice), and a local tiny
random Llama built in the test."""
from __future__ import annotations

import json
import random
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers.world import make_world

from data_tools.cli import main
from llava_lite.infer.openai_client import OpenAITeacher, Request, TeacherError, complete_all


def default_reply(body: dict) -> str:
    """Deterministic text in the shape each prompt asks for, echoing the query so replies differ."""
    system, query = body["messages"][0]["content"], body["messages"][-1]["content"]
    tag = sum(map(ord, query)) % 997
    if "Describe the image as someone looking at it" in system:
        return f"The picture shows a few simple shapes on a white background, number {tag}."
    if "You help build a dataset of instructions" in system:  # varied words, so ROUGE-L keeps them apart
        topics = random.Random(query).sample([f"topic{i}" for i in range(300)], 8)
        return "Instruction: Explain " + " ".join(topics) + "."
    if "You annotate user queries" in system:
        return "Coding, math" if "Python" in query else "writing"
    if "helpful, accurate assistant" in system:
        return f"An answer to: {query}"
    return f"Question: What do you see?\n===\nAnswer: Some shapes, number {tag}."


class FakeOpenAI(ThreadingHTTPServer):
    """A minimal chat-completions server: deterministic replies, scripted failures, call counts."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.calls = 0  # every HTTP attempt
        self.ok = 0  # answered (paid) requests
        self.fail_first: list[int] = []  # statuses for the next calls, e.g. [429, 500]
        self.fail_after: int | None = None  # answer this many, then 500 forever
        self.delay = 0.0
        self.in_flight = self.max_in_flight = 0
        self.bodies: list[dict] = []
        self.headers_seen: list[dict] = []
        self.reply = default_reply
        self.unknown_params: set[str] = set()  # an older server: refuses these request fields with a 400

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpenAI

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        s = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with s.lock:
            s.calls += 1
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            s.headers_seen.append({k.lower(): v for k, v in self.headers.items()})
            status = s.fail_first.pop(0) if s.fail_first else None
            refused = sorted(s.unknown_params & body.keys())
            if status is None and refused:
                status = 400
            if status is None and s.fail_after is not None and s.ok >= s.fail_after:
                status = 500
            if status is None:
                s.ok += 1
                s.bodies.append(body)
        time.sleep(s.delay)
        with s.lock:
            s.in_flight -= 1
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": {"message": "not found"}})
        if refused:
            return self._send(400, {"error": {"message": f"Unrecognized request argument supplied: {refused[0]}",
                                              "type": "invalid_request_error", "param": refused[0]}})
        if status is not None:
            return self._send(status, {"error": {"message": f"scripted {status}", "type": "test"}},
                              {"Retry-After": "0"})
        self._send(200, {
            "id": f"chatcmpl-{s.ok}", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": s.reply(body)}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


@pytest.fixture
def server():
    srv = FakeOpenAI()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def env(server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setenv("OPENAI_MODEL", "teacher-model")
    return server


def _req(text: str) -> Request:
    return Request("conversation", [{"role": "system", "content": "s"}, {"role": "user", "content": text}])


def test_config_from_environment_and_retries_on_429_and_500(env):
    env.fail_first = [429, 500, 429]
    teacher = OpenAITeacher(max_retries=3, backoff=0.001)
    assert teacher.complete(_req("hi")).startswith("Question: What do you see?")
    assert env.calls == 4 and env.ok == 1
    assert env.bodies[0]["model"] == "teacher-model" and env.bodies[0]["messages"][-1]["content"] == "hi"
    assert env.headers_seen[-1]["authorization"] == "Bearer test-key"


def test_gives_up_after_max_retries_and_never_retries_a_400(env):
    env.fail_first = [500, 500, 500]
    with pytest.raises(TeacherError, match="gave up after 2 attempts"):
        OpenAITeacher(max_retries=1, backoff=0.001).complete(_req("x"))
    assert env.calls == 2
    env.fail_first, env.calls = [400], 0
    with pytest.raises(TeacherError, match="BadRequest"):
        OpenAITeacher(max_retries=3, backoff=0.001).complete(_req("x"))
    assert env.calls == 1


def test_reply_limit_is_max_completion_tokens_with_a_fallback_for_older_servers(env, monkeypatch):
    OpenAITeacher(max_tokens=77).complete(_req("a"))
    assert env.bodies[-1]["max_completion_tokens"] == 77 and "max_tokens" not in env.bodies[-1]
    env.unknown_params = {"max_completion_tokens"}  # an older OpenAI-compatible server
    teacher = OpenAITeacher(max_tokens=55, max_retries=0)
    env.calls = 0
    assert teacher.complete(_req("b")).startswith("Question:")
    assert env.calls == 2 and env.bodies[-1]["max_tokens"] == 55 and "max_completion_tokens" not in env.bodies[-1]
    assert teacher.complete(_req("c")) and env.calls == 3  # it remembers: no second refusal
    # With the name fixed, there is no fallback: the server's refusal is the error.
    with pytest.raises(TeacherError, match="Unrecognized request argument supplied: max_completion_tokens"):
        OpenAITeacher(token_param="max_completion_tokens").complete(_req("d"))
    monkeypatch.setenv("OPENAI_TOKEN_PARAM", "max_tokens")
    env.calls = 0
    assert OpenAITeacher(max_tokens=9).complete(_req("e")) and env.calls == 1 and env.bodies[-1]["max_tokens"] == 9
    monkeypatch.setenv("OPENAI_TOKEN_PARAM", "max_length")
    with pytest.raises(ValueError, match="OPENAI_TOKEN_PARAM"):
        OpenAITeacher()


def test_rate_limit_and_concurrency(env):
    env.delay = 0.05
    teacher = OpenAITeacher(concurrency=3, backoff=0.001)
    replies = complete_all(teacher, [_req(f"q{i}") for i in range(9)])
    assert all(isinstance(r, str) for r in replies) and 2 <= env.max_in_flight <= 3
    env.delay, env.max_in_flight = 0.0, 0
    start = time.monotonic()
    complete_all(OpenAITeacher(concurrency=4, requests_per_minute=600), [_req(f"r{i}") for i in range(5)])
    assert time.monotonic() - start >= 0.4  # 5 starts spaced 0.1 s apart


def test_generate_resumes_without_paying_twice(env, tmp_path):
    root = make_world(tmp_path / "world", n_images=4)
    out = tmp_path / "gen.json"
    argv = ["generate", "--annotations", str(root / "instances_train.json"), "--out", str(out),
            "--teacher", "openai", "--max-retries", "1", "--concurrency", "2"]
    env.fail_after = 5  # the endpoint breaks down after 5 answers: the run is cut short
    assert main(argv) == 0
    rejects = [json.loads(l) for l in (tmp_path / "gen.json.rejects.jsonl").read_text().splitlines()]
    assert len(json.loads(out.read_text())) == 5 and len(rejects) == 7
    assert all(r["reason"].startswith("teacher error") for r in rejects)
    assert len((tmp_path / "gen.json.partial.jsonl").read_text().splitlines()) == 5
    env.fail_after = None  # healthy again: only the 7 missing requests are paid for
    assert main(argv) == 0
    assert env.ok == 12 and len(json.loads(out.read_text())) == 12
    assert (tmp_path / "gen.json.rejects.jsonl").read_text() == ""
    calls = env.calls
    assert main(argv) == 0 and env.calls == calls  # everything replays from the journal


def test_unparsable_replies_are_counted_and_kept(env, tmp_path):
    env.reply = lambda body: "Sorry, I cannot help with that."
    root = make_world(tmp_path / "world", n_images=2)
    out = tmp_path / "gen.json"
    assert main(["generate", "--annotations", str(root / "instances_train.json"), "--out", str(out), "--teacher",
                 "openai",
                 "--kinds", "conversation,reasoning"]) == 0
    rejects = [json.loads(l) for l in (tmp_path / "gen.json.rejects.jsonl").read_text().splitlines()]
    assert json.loads(out.read_text()) == [] and len(rejects) == 4
    assert all(r["reply"] == "Sorry, I cannot help with that." and r["reason"].startswith("parse:") for r in rejects)


def _tiny_llama(path, chat_template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    corpus = ["Question: What color is the circle? === Answer: red", "system user assistant shapes boxes image"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if chat_template:
        fast.chat_template = ("{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
                              "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    fast.save_pretrained(path)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("chat_template", [True, False])
def test_local_teacher_generates_deterministically(tmp_path, chat_template):
    from data_tools.teachers.local import LocalTeacher

    teacher = LocalTeacher(_tiny_llama(tmp_path / "lm", chat_template), max_new_tokens=6, device="cpu")
    assert ("<s>assistant:" in teacher.prompt([{"role": "user", "content": "hi"}])) == chat_template
    a, b = teacher.complete(_req("describe")), teacher.complete(_req("describe"))
    assert isinstance(a, str) and a == b


def test_generate_with_local_teacher_keeps_rejects(tmp_path):
    model = _tiny_llama(tmp_path / "lm", chat_template=True)
    root = make_world(tmp_path / "world", n_images=2)
    out = tmp_path / "gen.json"
    assert main(["generate", "--annotations", str(root / "instances_train.json"), "--out", str(out), "--teacher",
                 "local",
                 "--model-dir", str(model), "--max-new-tokens", "8", "--kinds", "conversation"]) == 0
    rejects = (tmp_path / "gen.json.rejects.jsonl").read_text().splitlines()
    assert len(json.loads(out.read_text())) + len(rejects) == 2  # every request is a record or a kept reject
    assert (tmp_path / "gen.json.partial.jsonl").exists()


def test_expand_answer_and_tag_with_the_endpoint(env, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("Write a Python function that adds two numbers.\nWrite a haiku about rain.\n")
    out = tmp_path / "new.json"
    argv = ["expand", "--seeds", str(seeds), "--n", "5", "--batch", "3", "--out", str(out), "--teacher", "openai",
            "--answer"]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert len(rows) == 5 and all(r["output"] == "An answer to: " + r["instruction"] for r in rows)
    paid = env.ok
    assert main(argv) == 0 and env.ok == paid and json.loads(out.read_text()) == rows  # replayed, reproducible
    tags = tmp_path / "tags.jsonl"
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "Write Python code.", "input": "", "output": "x"},
                                  {"instruction": "A poem please.", "input": "", "output": "y"}]))
    assert main(["tag", str(alpaca), str(tags), "--tagger", "teacher", "--teacher", "openai"]) == 0
    assert [json.loads(l)["tags"] for l in tags.read_text().splitlines()] == [["coding", "math"], ["writing"]]
    with pytest.raises(SystemExit, match="needs an LLM teacher"):
        main(["tag", str(alpaca), str(tags), "--tagger", "teacher"])


def test_journal_survives_a_torn_last_line(tmp_path):
    class Echo:
        name, concurrency = "echo", 1
        calls = 0

        def complete(self, request: Request) -> str:
            Echo.calls += 1
            return "re: " + request.messages[-1]["content"]

    journal = tmp_path / "j.jsonl"
    reqs = [_req(f"q{i}") for i in range(3)]
    assert complete_all(Echo(), reqs[:2], journal) == ["re: q0", "re: q1"]
    journal.write_text(journal.read_text() + '{"key": "abc", "rep')  # killed mid-write
    assert complete_all(Echo(), reqs, journal) == ["re: q0", "re: q1", "re: q2"] and Echo.calls == 3
    assert complete_all(Echo(), reqs, journal) == ["re: q0", "re: q1", "re: q2"] and Echo.calls == 3
