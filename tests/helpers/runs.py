"""Training runs on the tiny models, as the CLI and Trainer take them: config overrides, data sources,
the logged losses, and a simulated kill."""
from __future__ import annotations

import json
from pathlib import Path

from llava_lite.train.recipe import Trainer

CONFIGS = Path(__file__).parents[2] / "configs"


def source(path, fmt="auto"):
    return f"data.sources=[{{path: {path}, format: {fmt}, image_folder: {Path(path).parent / 'images'}}}]"


def base(tiny_lm, out, *extra):
    # The shipped configs pick Vicuna's template for Vicuna; the tiny LM brings its own (ChatML).
    return [f"model.lm={tiny_lm}", "model.init_from=null", "data.chat_template=null", "model.vision.model=tiny",
            "model.vision.pretrained=null", "model.dtype=float32",
            "data.num_workers=0", "data.max_length=128", "train.batch_size=4", "train.gradient_checkpointing=false",
            f"train.output_dir={out}", *extra]


def losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def kill_at(monkeypatch, n):
    """Make the n-th optimizer step raise, as if the process were killed."""
    calls = {"n": 0}
    real_step = Trainer._step

    def dying_step(self, window):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, window)

    monkeypatch.setattr(Trainer, "_step", dying_step)
