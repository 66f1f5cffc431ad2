"""`model.init_from` in the layouts it accepts:

- a llava-lite model directory: loaded by `build.build_model` (`resolve_init_from` returns None);
- a llava-hf (`LlavaForConditionalGeneration`) or LLaVA `llava_llama` directory: imported once
  (`hf_import.import_dir`) into `<train.output_dir>/imported/<hf|llava>-<key>/` and loaded from there;
- LLaVA's stage-1 output (`mm_projector.bin`, alone or with its config.json): a fresh model from
  `model.lm` and `model.vision` with that projector loaded strictly.

Anything else is one ConfigError naming the path and the layouts accepted.

Why the import lives in the run's output directory and not in a cache shared by runs: a run that
trains LoRA, or only the projector, references its base LM by path, so the imported LM must live as
long as the run directory (deleting the run deletes it; no orphaned 14 GB copy elsewhere), and a
second run or `--resume` in the same directory finds it. The key covers the source path, its files'
sizes and mtimes, dtype, tower and template, so a changed checkpoint or setting imports afresh
instead of silently reusing a stale copy. Under `accelerate launch` one process per machine imports
(into a staging directory, published with one rename) while the others wait, then all load it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from llava_lite.config import Config, ConfigError, VisionConfig
from llava_lite.interop.hf_import import detect, import_dir, load_llava_projector

LAYOUTS = ("a llava-lite model directory, a llava-hf (LlavaForConditionalGeneration) directory, a LLaVA "
           "llava_llama directory, or LLaVA's stage-1 mm_projector.bin (or its directory)")


def _kind(path: Path) -> str:
    if not path.exists():
        raise ConfigError(f"model.init_from={str(path)!r} does not exist; it must be {LAYOUTS}")
    try:
        return detect(path)
    except ValueError:
        raise ConfigError(f"model.init_from={str(path)!r} is none of the layouts accepted: {LAYOUTS}") from None


def _vision_tower(vision: VisionConfig):
    """model.vision names the tower in place of a llava_llama checkpoint's mm_vision_tower, when set."""
    default = VisionConfig()
    if vision.model == default.model and vision.pretrained == default.pretrained:
        return None
    if vision.model.startswith("local-dir:"):
        return vision.model
    return (vision.model, vision.pretrained)


def resolve_init_from(cfg: Config, quantize: str | None = None):
    """The model a run starts from when model.init_from is not a llava-lite directory; None otherwise."""
    from llava_lite.model.llava import LlavaLite

    if not cfg.model.init_from:
        return None
    path = Path(cfg.model.init_from).expanduser()
    kind = _kind(path)
    if kind == "llava-lite":
        return None
    if kind == "mm-projector":
        if not cfg.model.lm:
            raise ConfigError(f"model.init_from={str(path)!r} holds only LLaVA's stage-1 projector: set model.lm "
                              "(and model.vision) to the base LM and tower it was trained with")
        model = LlavaLite.build(cfg.model, quantize=quantize)
        load_llava_projector(model, path)
        return model
    tower = _vision_tower(cfg.model.vision) if kind == "llava-llama" else None
    key = _cache_key(path, cfg.model.dtype, tower, cfg.data.chat_template)
    out = Path(cfg.train.output_dir) / "imported" / f"{'hf' if kind == 'hf-llava' else 'llava'}-{key}"
    from accelerate import PartialState

    with PartialState().local_main_process_first():  # one import per machine; the others then find it
        if not (out / "llava_lite.json").is_file():
            staging = out.with_name(f".{out.name}.{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            kw = {"vision_tower": tower} if kind == "llava-llama" else {}
            import_dir(path, staging, base_cfg=cfg.model, chat_template=cfg.data.chat_template, **kw)
            try:
                os.replace(staging, out)
            except OSError:  # another machine's process (shared file system) published it first
                shutil.rmtree(staging, ignore_errors=True)
            print(f"model.init_from: imported {kind} {path} into {out}", flush=True)
    return LlavaLite.from_pretrained(out, dtype=cfg.model.dtype, attn_implementation=cfg.model.attn_implementation,
                                     quantize=quantize)


def _cache_key(path: Path, *settings) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps([str(path.resolve()), stats, *settings], default=str).encode()).hexdigest()[:12]
