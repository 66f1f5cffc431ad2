"""HF-style model directories: `save_pretrained(model, dir)` / `from_pretrained(dir)`.

    dir/llava_lite.json          resolved model config + how the LM is stored + prompt mode
    dir/projector.safetensors
    dir/tokenizer/               tokenizer with the <image> token
    dir/lm/                      full LM weights (when the LM was trained), or
    dir/lm_adapter/              a peft LoRA adapter over the base LM named in the config, or nothing
                                 (LM untouched, e.g. after stage 1: the base LM is referenced)
    dir/vision/                  open_clip local-dir copy, unless the tower is a hub name + tag

A model is staged in a temporary directory and moved into place with its config file last, so a
crash never leaves a half-written directory that looks loadable. The directory may also hold a
training run's checkpoints/ and logs, which saving leaves alone.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from .config import ModelConfig, from_dict
from .model import DTYPES, LlavaLite, load_lm
from .projector import build_projector
from .vision import VisionTower

CONFIG_NAME = "llava_lite.json"


def _publish(staged: Path, out_dir: Path) -> None:
    """Move a staged model into `out_dir`, which may also hold checkpoints and logs. The config file
    is removed first and written last: a directory is a loadable model only once it is complete."""
    (out_dir / CONFIG_NAME).unlink(missing_ok=True)
    for entry in staged.iterdir():
        if entry.name == CONFIG_NAME:
            continue
        target = out_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    os.replace(staged / CONFIG_NAME, out_dir / CONFIG_NAME)


def _is_peft(lm) -> bool:
    return hasattr(lm, "peft_config")


def save_pretrained(model: LlavaLite, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    cfg = dataclasses.asdict(model.cfg)
    if Path(cfg["lm"]).exists():  # a local base LM is referenced by absolute path, so the directory can move
        cfg["lm"] = str(Path(cfg["lm"]).resolve())
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".save-", dir=out_dir) as staging:
        tmp = Path(staging)
        if model.vision.needs_weights_saved():
            model.vision.save_local(tmp / "vision")
            cfg["vision"].update(model="local-dir:vision", pretrained=None)
        save_file({k: v.detach().cpu().contiguous() for k, v in model.projector.state_dict().items()},
                  str(tmp / "projector.safetensors"))
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if _is_peft(model.lm):
            # The resized embedding rows are rebuilt deterministically on load (model._resize_embeddings),
            # so the adapter need not carry a copy of the whole embedding matrix.
            model.lm.save_pretrained(tmp / "lm_adapter", save_embedding_layers=False)
            lm_weights = "lora"
        elif any(p.requires_grad for p in model.lm.parameters()) or getattr(model, "lm_weights", "") == "full":
            model.lm.save_pretrained(tmp / "lm")
            cfg["lm"], lm_weights = "lm", "full"
        else:
            lm_weights = "reference"
        meta = {
            "model": cfg,
            "lm_weights": lm_weights,
            "mode": getattr(model, "render_mode", "chat"),
            "system_prompt": getattr(model, "system_prompt", None),
            "image_seq_len": model.image_seq_len,
        }
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        _publish(tmp, out_dir)
    return out_dir


def _resolve(ref: str, base: Path) -> str:
    """Paths saved relative to a model directory ("lm", "local-dir:vision") become absolute."""
    if ref.startswith("local-dir:"):
        path = Path(ref[len("local-dir:"):])
        return f"local-dir:{path if path.is_absolute() else base / path}"
    return str(base / ref) if (base / ref).exists() and not Path(ref).is_absolute() else ref


def read_meta(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a llava-lite model directory: {CONFIG_NAME} is missing")
    return json.loads(path.read_text())


def from_pretrained(
    model_dir: str | Path,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    trainable_lora: bool = False,
    quantize: str | None = None,
) -> LlavaLite:
    from transformers import AutoTokenizer

    model_dir = Path(model_dir).resolve()
    meta = read_meta(model_dir)
    cfg: ModelConfig = from_dict(ModelConfig, meta["model"])
    cfg.vision.model = _resolve(cfg.vision.model, model_dir)
    cfg.lm = _resolve(cfg.lm, model_dir)
    cfg.init_from = None
    cfg.dtype = dtype or cfg.dtype
    cfg.attn_implementation = attn_implementation or cfg.attn_implementation
    tokenizer = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    lm = load_lm(cfg.lm, cfg, len(tokenizer), quantize)
    if meta["lm_weights"] == "lora":
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, model_dir / "lm_adapter", is_trainable=trainable_lora)
    vision = VisionTower(cfg.vision).to(DTYPES[cfg.dtype])
    projector = build_projector(cfg.projector, vision.width, lm.config.hidden_size)
    projector.load_state_dict(load_file(str(model_dir / "projector.safetensors")))
    model = LlavaLite(vision, projector.to(DTYPES[cfg.dtype]), lm, tokenizer, cfg)
    model.render_mode = meta.get("mode", "chat")
    model.system_prompt = meta.get("system_prompt")
    model.lm_weights = meta["lm_weights"]
    model.eval()
    return model

