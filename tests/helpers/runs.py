"""Training runs on the tiny models, as the CLI and Trainer take them: config overrides, data sources,
the logged losses, and a simulated kill."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llava_lite.train.recipe import Trainer

ROOT = Path(__file__).parents[2]
CONFIGS = ROOT / "configs"


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


def torchrun(nproc: int, args: list[str], **env) -> subprocess.CompletedProcess:
    """`llava-lite train ARGS` under a bare torchrun of `nproc` CPU processes (one thread each, offline)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    env.pop("ACCELERATE_USE_CPU", None)  # the package must form the group itself
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "llava_lite.cli", "train", *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
