"""The demo presets (sizes and steps of every base-model step) and the "finished" marker.

One place for every number: `PRESETS["fast"]` is a smoke run, `PRESETS["full"]` is what
`make demo` uses (CLIP ~50 s, LM ~200 s on a quiet 2-core CPU with native bf16: a CLIP step of 128
images takes ~0.3 s, an LM step of 4 x 256 tokens ~0.08 s), `PRESETS["smol"]` takes the full
preset's world and CLIP and a real pretrained LM (SmolLM2-135M-Instruct, demo/smol.py) instead of
the tokenizer and LM built here.

The LM is what limits stage 2: the image is read through the lookup skills the LM learned on
text (answer a question from a caption in its context), and those are slow to appear in a tiny
Llama trained from scratch:
- the learning rate decides whether they appear at all: at 3e-3 a 256-wide Llama stays an
  n-gram model (answers ignore the caption, and later the image); a 2-layer toy recalls 3
  key-value pairs 100% after 600 steps at 5e-4, 45% at 2e-3;
- then it takes steps. Shape questions answered from a caption ("What shape is the purple
  object?" -> copy the word after "purple") are at chance after 1500 steps (14%) and 59% after
  2500; colour questions 50% -> 60-68%. Stage-2 VQA with stages 1 and 2 of 600 and 500 steps:
  52.8% on the 1500-step LM, 68.2% on the 2500-step one (shape questions 28% -> 77%). (The first
  ran its stages in fp32, the second in bf16; that alone moved VQA by about 1 point.)
- the lookup curriculum (`lm.lookup`) makes it appear: short lookup documents alone first (on them a
  2-layer toy starts to read between 1800 and 2100 steps; on the world's text it did not in 1200 steps),
  then the world's text. The fast preset uses it (README, the fast preset's tables).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from llava_lite.config import ConfigError

PRESETS: dict[str, dict[str, Any]] = {
    "fast": {
        "seed": 0,
        # questions of each type in an image's short-answer record (stage-2 data); 3 did not lift this
        # preset's 2-layer LM (46.2% against 40.9% with another image; 1: 45.7%) and costs stage 2 ~2x
        "short_per_type": 1,
        # the short-answer records only: with descriptions and text tasks beside them (0.1 / 0.25, as the full
        # preset) the 2-layer LM read little beyond colour (48.2% VQA against 41.9% with another image, 400
        # stage-2 steps); even at 0.02 / 0.05 existence fell to chance (48.5% against 40.3%); alone: 55.1%
        # against 40.9%, and 59.1% against 40.7% at 600 steps (README, "What moves the demo's number")
        "mixture": {"long": 0.0, "short": 1.0, "text": 0.0},
        "world": {"n_train": 1500, "n_test": 200, "image_size": 64},
        "text_tasks": {"n_train": 1000, "n_test": 200},
        "tokenizer": {"vocab_size": 2048},
        "clip": {
            "vision": {"width": 128, "layers": 3, "heads": 4, "patch_size": 8},
            "text": {"width": 128, "layers": 1, "heads": 4, "context_length": 64},
            # 100 steps at patch-loss weight 3 (before: 50 at 1; about 70 s here against 36 s): the shape under each
            # object patch is read 72% right instead of 52%, and stage 2 reads shape only through the patches
            "embed_dim": 128, "batch_size": 64, "steps": 100, "lr": 3e-3, "weight_decay": 0.1, "warmup": 0.1,
            "patch_loss_weight": 3.0,
        },
        "lm": {
            # 8 heads of 16 (4 key-value heads: the same weights and cost as 4 of 32): with the CLIP above, 4
            # heads read shape or existence depending on the seeds, 8 read both (README, the fast preset's table)
            "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 4,
            "intermediate_size": 344, "max_position_embeddings": 1024,
            "seq_len": 256, "batch_size": 4, "steps": 3000, "lr": 1e-3, "weight_decay": 0.01, "warmup": 0.05,
            # the lookup curriculum (demo/lm_pretrain.py): 2400 steps of short lookup documents (6 per train image)
            # first, then 600 of the world's text. The 600-step LM read nothing from a caption, and stage 2 built
            # its lookups from nothing: 54.5-67.7% VQA over 3 x 3 seeds; this LM: README, the fast preset's tables
            "lookup": {"per_image": 6, "steps": 2400},
        },
    },
    "full": {
        "seed": 0,
        "short_per_type": 3,  # isolated (demo/run.py): 82.5% VQA against 70.6% with 1 (README levers table)
        # stage 2's sources as repeat factors per epoch (demo/run.py): descriptions and reasoning answers are
        # long, and the loss is a mean over response tokens, so at weight 1 they would drown the one-word VQA
        # answers that every image's short-answer record teaches; text-only instructions keep text skills.
        # Lists are schedules (one weight per epoch): the long records only from epoch 1 (step 688 of 1000), as
        # descriptions from the start keep colour from binding to its object (README, "What moves the demo's
        # number": 87.4% VQA against 82.2% with all sources from the start)
        "mixture": {"long": [0, 0.3], "short": [1.25, 1.0], "text": 0.25},
        "world": {"n_train": 8000, "n_test": 500, "image_size": 64},
        "text_tasks": {"n_train": 4000, "n_test": 400},
        "tokenizer": {"vocab_size": 3072},
        "clip": {
            "vision": {"width": 128, "layers": 3, "heads": 4, "patch_size": 8},
            "text": {"width": 128, "layers": 1, "heads": 4, "context_length": 64},
            "embed_dim": 128, "batch_size": 128, "steps": 160, "lr": 3e-3, "weight_decay": 0.1, "warmup": 0.1,
            "patch_loss_weight": 3.0,
        },
        "lm": {
            "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 688, "max_position_embeddings": 1024,
            "seq_len": 256, "batch_size": 4, "steps": 2500, "lr": 1e-3, "weight_decay": 0.01, "warmup": 0.05,
        },
    },
}
# The path GPU users take: a pretrained instruct LM taught to see with LoRA, its text skills kept. No tokenizer or
# LM is built: "lm" names the checkpoint (demo/smol.py); one question of each type per record keeps stage 2's
# sequences short (each step runs a 135M-parameter LM, 30 layers, on 8 of them).
# The world's text tasks are synthetic (arithmetic and lookups in the world's phrasing): a real LM's text skills
# are its own, kept by LoRA and checked on English (demo/smol.py), so stage 2 does not train on them.
PRESETS["smol"] = {**copy.deepcopy({k: v for k, v in PRESETS["full"].items() if k not in ("tokenizer", "lm")}),
                   "short_per_type": 1, "mixture": {"long": 0.1, "short": 1.0, "text": 0.0},
                   # the full world's first 100 test images (an image depends on the seed and its index only):
                   # a 135M-parameter LM answering the full 500 images' 8,000 questions would double the run
                   "world": {**PRESETS["full"]["world"], "n_test": 100},
                   "lm": {"pretrained": "smollm2"}}

MARKER = "DONE.json"


def demo_dtype() -> str:
    """The demo trains in bf16 (autocast; about 2x faster than float32) where the CPU has native bf16, and in
    float32 elsewhere: without AVX-512 BF16 or AMX, bf16 matmuls are emulated and about 20x slower. The
    dtype is part of each base model's cache key and of the demo's report."""
    from llava_lite.model.lm import cpu_bf16_native

    return "bfloat16" if cpu_bf16_native() else "float32"


def pretrained_lm(preset: dict) -> str | None:
    """The name of the pretrained LM a preset uses instead of building one, else None."""
    return preset["lm"].get("pretrained")


def resolve(preset: str | dict) -> dict[str, Any]:
    """A preset name or an already resolved dict -> a private copy of the dict."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        return copy.deepcopy(PRESETS[preset])
    return copy.deepcopy(preset)


def fingerprint(cfg: Any) -> str:
    return hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def world_fingerprint(world_dir: str | Path) -> str:
    """Identifies a finished world by its `world.json` (seed, sizes, counts), not by its path."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the world first (llava_lite.demo.world.make_world)")
    return fingerprint(json.loads(path.read_text()))


def finished(out_dir: str | Path, cfg: Any) -> dict | None:
    """The marker's contents if `out_dir` holds a model finished with this exact config, else None."""
    path = Path(out_dir) / MARKER
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return info if info.get("fingerprint") == fingerprint(cfg) else None


def mark_finished(out_dir: str | Path, cfg: Any, info: dict) -> dict:
    """Write the marker last and atomically: a run killed earlier leaves no marker."""
    info = {**info, "fingerprint": fingerprint(cfg), "config": cfg}
    path = Path(out_dir) / MARKER
    tmp = path.with_name(MARKER + ".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)
    return info
