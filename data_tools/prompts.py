"""Load the editable prompt files under `data_tools/prompts/` (or a folder of your own)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from llava_lite.data.conversation import DataError

PROMPTS_DIR = Path(__file__).parent / "prompts"


def load_prompt(name: str, folder: Path | None = None) -> dict[str, Any]:
    """`<folder>/<name>.yaml`: a `system` text plus task-specific keys (`examples`, `operations`)."""
    path = Path(folder or PROMPTS_DIR) / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("system"), str):
        raise DataError(f"{path}: a prompt file needs a 'system' text", "bad prompt file")
    return data


def load_lines(name: str, folder: Path | None = None) -> list[str]:
    """`<folder>/<name>.txt`: one entry per non-empty line."""
    path = Path(folder or PROMPTS_DIR) / f"{name}.txt"
    return [l.strip() for l in path.read_text().splitlines() if l.strip()]


def few_shot_messages(prompt: dict[str, Any], query: str) -> list[dict[str, str]]:
    """system, then each example as a user/assistant exchange, then the query."""
    messages = [{"role": "system", "content": prompt["system"].strip()}]
    for ex in prompt.get("examples") or []:
        messages += [
            {"role": "user", "content": ex["context"].strip()},
            {"role": "assistant", "content": ex["reply"].strip()},
        ]
    return messages + [{"role": "user", "content": query.strip()}]
