"""Tiny models made on the fly: a byte-level BPE tokenizer with a chat template, a 2-layer Llama,
and the packaged tiny open_clip config. Nothing touches the network."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers.smollm2 import convert_once
from helpers.tiny import make_tiny_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A ChatML tiny Llama + tokenizer saved to a directory."""
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), template="chatml")


@pytest.fixture(scope="session")
def tiny_lm_llama3(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm_llama3"), template="llama3")


# The served tiny model: used by tests/serve/ and by the served teacher and judge in tests/eval/.
# Imports inside the fixtures: a session that collects no serve test needs neither the package nor uvicorn here.
@pytest.fixture(scope="session")
def serve_model_dir(tmp_path_factory, tiny_lm) -> Path:
    from llava_lite.config import ModelConfig, VisionConfig
    from llava_lite.model.llava import LlavaLite

    out = tmp_path_factory.getbasetemp() / "serve-model"
    if not out.exists():
        cfg = ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm))
        LlavaLite.build(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def assistant(serve_model_dir):
    from helpers.server import load_assistant

    return load_assistant(serve_model_dir)


@pytest.fixture(scope="module")
def long_context_assistant(tmp_path_factory, tiny_lm):
    """The tiny model with room for the teacher's few-shot prompts (RoPE takes any length)."""
    from helpers.server import load_assistant

    from llava_lite.config import ModelConfig, VisionConfig
    from llava_lite.model.llava import LlavaLite

    root = tmp_path_factory.mktemp("serve-teacher")
    lm = root / "lm"
    lm.mkdir()
    for f in tiny_lm.iterdir():
        (lm / f.name).write_bytes(f.read_bytes())
    config = json.loads((lm / "config.json").read_text())
    (lm / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 4096}))
    cfg = ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(lm))
    return load_assistant(LlavaLite.build(cfg).save_pretrained(root / "model"))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct as a plain HF directory (helpers/smollm2.py); skips when the wheel is missing."""
    return convert_once(tmp_path_factory)


def pytest_collection_modifyitems(items):
    """Every test that needs the real SmolLM2 model (the `smollm2_dir` fixture, directly or through another
    fixture) is an end-to-end test: marked slow, so `make test-fast` (-m "not slow") leaves it out."""
    for item in items:
        if "smollm2_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
