"""The demo's base models, built from nothing: world -> tokenizer -> CLIP -> LM.

    from llava_lite.demo.pretrain import build_base
    paths = build_base("runs/demo", preset="full")   # {"world", "tokenizer", "clip", "lm", ...}

or `python -m llava_lite.demo.pretrain --preset fast --out runs/demo-fast`. Every step is
skipped when its output directory already holds a finished result for the same config, so a
second `make demo` reuses them. Layout under `out`:
  world/      images/{train,test}/, annotations/, captions_{split}.json, world.json, text_tasks/
  tokenizer/  PreTrainedTokenizerFast (ChatML template)
  clip/       open_clip local-dir: open_clip_config.json + open_clip_model.safetensors
  lm/         LlamaForCausalLM + tokenizer (save_pretrained)
  base.json   paths, metrics and wall times of each step
A preset with a pretrained LM (`smol`) builds no tokenizer or LM: "lm" is that checkpoint's directory.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from llava_lite.demo.clip_pretrain import pretrain_clip
from llava_lite.demo.lm_pretrain import pretrain_lm
from llava_lite.demo.presets import PRESETS, pretrained_lm, resolve
from llava_lite.demo.text_tasks import write_text_tasks
from llava_lite.demo.tokenizer import train_tokenizer
from llava_lite.demo.world import make_world
from llava_lite.log import logger

__all__ = ["build_base", "build_world", "pretrain_clip", "pretrain_lm", "train_tokenizer"]


def build_world(out_dir: str | Path, preset: str | dict = "full") -> dict:
    """The world and the text tasks for a preset; reused when `world.json` already matches."""
    p, out = resolve(preset), Path(out_dir)
    w, t = p["world"], p["text_tasks"]
    meta = out / "world.json"
    if meta.is_file():
        old = json.loads(meta.read_text())
        same = (old["seed"], old["image_size"], old["counts"]["train"]["images"], old["counts"]["test"]["images"]) == (
            p["seed"], w["image_size"], w["n_train"], w["n_test"])
        if same and old.get("text_tasks") == t:
            logger.info(f"[world] reusing {out}")
            return old
        shutil.rmtree(out)  # a different world: no stale images may survive
    write_text_tasks(out, t["n_train"], t["n_test"], seed=p["seed"])
    world = make_world(out, w["n_train"], w["n_test"], image_size=w["image_size"], seed=p["seed"])
    world["text_tasks"] = t
    meta.write_text(json.dumps(world))  # make_world wrote it last; add the text-task sizes
    return world


def build_base(out_dir: str | Path, preset: str | dict = "full", threads: int = 2, name: str | None = None) -> dict:
    """Run (or reuse) every base-model step; returns paths, metrics and per-step seconds. `name` labels a
    preset handed in as a dict (base.json's "preset"; "custom" without it)."""
    torch.set_num_threads(threads)
    out = Path(out_dir)
    paths = {k: out / k for k in ("world", "tokenizer", "clip", "lm")}
    seconds, results = {}, {}
    steps = [
        ("world", lambda: build_world(paths["world"], preset)),
        ("tokenizer", lambda: train_tokenizer(paths["world"], paths["tokenizer"], preset)),
        ("clip", lambda: pretrain_clip(paths["world"], paths["clip"], preset)),
        ("lm", lambda: pretrain_lm(paths["world"], paths["tokenizer"], paths["lm"], preset)),
    ]
    if pretrained_lm(resolve(preset)):  # its own tokenizer; converted once, cached outside `out`
        from llava_lite.demo.smol import smollm2_dir

        paths["lm"] = paths["tokenizer"] = smollm2_dir()
        steps = [(part, run) for part, run in steps if part not in ("tokenizer", "lm")]
        results |= {"tokenizer": {}, "lm": {}}
    for part, run in steps:
        t0 = time.time()
        results[part] = run()
        seconds[part] = round(time.time() - t0, 1)
    summary = {
        "preset": preset if isinstance(preset, str) else name or "custom",
        "paths": {k: str(v) for k, v in paths.items()},
        "seconds": seconds,
        "clip": results["clip"].get("metrics"),
        "lm": results["lm"].get("metrics"),
        "tokenizer_vocab": results["tokenizer"].get("vocab"),
        "heldout_pairs": results["world"]["heldout_pairs"],
    }
    (out / "base.json").write_text(json.dumps(summary, indent=1))
    logger.info(f"[base] done in {sum(seconds.values()):.1f} s: " + ", ".join(f"{k} {v} s" for k, v in seconds.items()))
    return summary


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Build the demo's world and pre-train its base models.")
    ap.add_argument("--preset", default="full", choices=sorted(PRESETS))
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    build_base(a.out, a.preset, a.threads)


if __name__ == "__main__":
    main()
