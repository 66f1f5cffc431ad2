"""The data tools' OpenAI-compatible teacher against `llava-lite serve`: the teacher's requests
(system prompt, few-shot turns, per-request seeds, concurrency, API key) are answered as
`Assistant.reply` answers them, and `llava-lite data generate --teacher openai` runs end to end."""
from __future__ import annotations

import json

import pytest
from helpers.server import KEY, LiveServer, direct
from helpers.world import make_world

from data_tools.cli import main as data_main
from llava_lite.infer.openai_client import OpenAITeacher, Request, TeacherError, complete_all
from llava_lite.serve import Settings, create_app


@pytest.fixture(scope="module")
def server(long_context_assistant):
    with LiveServer(create_app(long_context_assistant, Settings(model_name="tiny-llava", api_key=KEY))) as live:
        yield live


def test_teacher_replies_match_the_model(server, long_context_assistant):
    teacher = OpenAITeacher(model="tiny-llava", base_url=f"{server.url}/v1", api_key=KEY, concurrency=4,
                            max_tokens=16, max_retries=0)
    turns = [("system", "You write questions about images."), ("user", "Two circles."), ("assistant", "How many?")]
    requests = [Request("conversation", [{"role": r, "content": t} for r, t in turns + [("user", f"Scene {i}.")]],
                        seed=i)
                for i in range(8)]
    replies = complete_all(teacher, requests)
    for i, got in enumerate(replies):
        want = direct(long_context_assistant, turns + [("user", f"Scene {i}.")], max_new_tokens=16,
                      temperature=teacher.temperature, seed=i).text
        assert got == want if want else isinstance(got, TeacherError)  # an empty reply is the teacher's error


def test_data_generate_with_the_served_model(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    root = make_world(tmp_path / "world", n_images=2)
    out = tmp_path / "gen.json"
    argv = ["generate", "--annotations", str(root / "instances_train.json"), "--out", str(out), "--teacher", "openai",
            "--base-url", f"{server.url}/v1", "--model", "tiny-llava", "--max-new-tokens", "16", "--max-retries", "0"]
    assert data_main(argv) == 0
    rejects = [json.loads(line) for line in (tmp_path / "gen.json.rejects.jsonl").read_text().splitlines()]
    kept = json.loads(out.read_text())
    # A random model's text rarely parses as a Q/A pair; every request must have been answered, though.
    assert len(kept) + len(rejects) > 0
    assert not [r for r in rejects if r["reason"].startswith("teacher error")], rejects
