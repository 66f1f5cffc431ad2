"""What a run is made of: the model with the right parts trainable, the data, the optimizer.

`set_trainable` is the one place that decides what trains in each stage, and it prints it.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import Config, LoraConfig
from .conversation import Conversation
from .data import read_conversations
from .model import LlavaLite
from .pretrained import from_pretrained


def build_model(cfg: Config) -> LlavaLite:
    """Fresh from base checkpoints, or continue from a llava-lite directory (stage 2 <- stage 1)."""
    quantize = cfg.lora.quantize if cfg.lora.enabled else None
    if cfg.model.init_from:
        model = from_pretrained(cfg.model.init_from, dtype=cfg.model.dtype,
                                attn_implementation=cfg.model.attn_implementation, quantize=quantize)
        if hasattr(model.lm, "peft_config"):  # a LoRA run continues from merged weights
            model.lm = model.lm.merge_and_unload()
    else:
        model = LlavaLite.build(cfg.model, quantize=quantize)
    model.render_mode = cfg.data.mode
    model.system_prompt = cfg.data.system_prompt
    if cfg.lora.enabled and cfg.train.stage != "align":
        model.lm = apply_lora(model.lm, cfg.lora, cfg.train.gradient_checkpointing)
    return model


def apply_lora(lm: nn.Module, lora: LoraConfig, gradient_checkpointing: bool) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora.quantize:
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=gradient_checkpointing)
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(lm, peft_cfg)


def count(params) -> int:
    return sum(p.numel() for p in params)


def set_trainable(model: LlavaLite, stage: str, log=print) -> dict[str, int]:
    """align: projector only. instruct: projector + LM (all of it, or its LoRA weights).
    text: the LM only (no image is seen, so the projector would get no gradient).
    The vision tower never trains."""
    model.vision.requires_grad_(False)
    model.projector.requires_grad_(stage in ("align", "instruct"))
    lora = hasattr(model.lm, "peft_config")
    if stage == "align":
        model.lm.requires_grad_(False)
    elif not lora:  # peft already froze everything but the adapters
        model.lm.requires_grad_(True)
    parts = {"vision": model.vision, "projector": model.projector, "lm" + (" (lora)" if lora else ""): model.lm}
    counts = {}
    for name, module in parts.items():
        n = count(p for p in module.parameters() if p.requires_grad)
        total = count(module.parameters())
        counts[name] = n
        log(f"[{'TRAINABLE' if n else 'FROZEN'}] {name}: {n:,} / {total:,} parameters")
    return counts


def build_optimizer(model: LlavaLite, cfg: Config) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only; the projector may have its own learning rate;
    no weight decay on biases and norms (1-D tensors)."""
    t = cfg.train
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = t.projector_lr if (name.startswith("projector.") and t.projector_lr) else t.lr
        wd = t.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, wd), []).append(p)
    if not groups:
        raise ValueError(f"stage {t.stage!r} leaves nothing to train")
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_sources(sources, stage: str) -> list[Conversation]:
    """Read every configured source; text-only stages reject records with images."""
    conversations: list[Conversation] = []
    for src in sources:
        if not src.path:
            raise ValueError("a data source has no 'path'")
        convs = read_conversations(src.path, src.format, src.image_folder)
        conversations += _weighted(convs, src.weight)
    if stage == "text":
        with_images = [c.where for c in conversations if c.images]
        if with_images:
            raise ValueError(f"stage 'text' got {len(with_images)} record(s) with images, first: {with_images[0]}")
    return conversations


def _weighted(convs: list[Conversation], weight: float) -> list[Conversation]:
    """A weight of 2.5 repeats a source twice and a half; weights below 1 take a prefix share."""
    whole, frac = divmod(weight, 1.0)
    return convs * int(whole) + convs[: round(frac * len(convs))]
