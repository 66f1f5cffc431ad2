"""A training stage is data: what trains, how records are rendered, which learning rates apply,
and what a checkpoint must hold. `set_trainable`, the optimizer's groups (`optim.py`) and the
checkpoints (`checkpoints.py`) all read the record; nothing else decides what trains.

| stage    | trains            | render | images | lr groups                      |
|----------|-------------------|--------|--------|--------------------------------|
| align    | projector         | plain  | yes    | projector: train.projector_lr  |
| instruct | projector + LM    | chat   | yes    | projector: train.projector_lr  |
| text     | LM                | chat   | no     |                                |
| preference | projector + LM  | chat   | yes    | projector: train.projector_lr  |

Preference training reads pairs (data/pairs.py) and minimises a DPO-family loss (preference.py).

The vision tower never trains. Under LoRA "LM" means its adapter weights (peft freezes the rest).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from llava_lite.log import logger
from llava_lite.model.lm import is_peft

PARTS = ("vision", "projector", "lm")


@dataclass(frozen=True)
class Stage:
    name: str
    trains: tuple[str, ...]  # parts of LlavaLite whose weights train
    render_mode: str  # "plain" (image then caption) or "chat" (the tokenizer's template), unless data.mode says
    images: bool  # records may carry images (text SFT: no image is ever seen)
    lr_keys: tuple[tuple[str, str], ...] = ()  # (part, TrainConfig field) for parts with their own lr
    pairs: bool = False  # records are preference pairs: chosen and rejected answers to one prompt

    @property
    def checkpoint_parts(self) -> tuple[str, ...]:
        """What a checkpoint must store besides optimizer, schedule, RNG and data state: the parts
        that train. Frozen parts are referenced by the run's config, never copied."""
        return self.trains

    def lr_key(self, part: str) -> str:
        return dict(self.lr_keys).get(part, "lr")


STAGES = {
    "align": Stage("align", trains=("projector",), render_mode="plain", images=True,
                   lr_keys=(("projector", "projector_lr"),)),
    "instruct": Stage("instruct", trains=("projector", "lm"), render_mode="chat", images=True,
                      lr_keys=(("projector", "projector_lr"),)),
    # No image is seen, so the projector would get no gradient.
    "text": Stage("text", trains=("lm",), render_mode="chat", images=False),
    "preference": Stage("preference", trains=("projector", "lm"), render_mode="chat", images=True,
                        lr_keys=(("projector", "projector_lr"),), pairs=True),
}


def count(params) -> int:
    return sum(p.numel() for p in params)


def set_trainable(model: nn.Module, stage: Stage, log=logger.info) -> dict[str, int]:
    """requires_grad as the stage says, logged part by part; returns trainable counts per part."""
    lora = is_peft(model.lm)
    for part in PARTS:
        module = getattr(model, part)
        if part == "lm" and lora:  # peft already froze everything but the adapters
            if "lm" not in stage.trains:
                module.requires_grad_(False)
            continue
        module.requires_grad_(part in stage.trains)
    counts = {}
    for part in PARTS:
        module = getattr(model, part)
        name = part + (" (lora)" if part == "lm" and lora else "")
        n = count(p for p in module.parameters() if p.requires_grad)
        counts[name] = n
        log(f"[{'TRAINABLE' if n else 'FROZEN'}] {name}: {n:,} / {count(module.parameters()):,} parameters")
    return counts
