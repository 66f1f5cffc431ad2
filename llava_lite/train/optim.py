"""The optimizer and learning-rate schedule of a training stage."""
from __future__ import annotations

import math

import torch
from torch import nn

from llava_lite.config import ConfigError, TrainConfig
from llava_lite.train.stages import Stage


def build_optimizer(model: nn.Module, stage: Stage, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over trainable parameters only; a part may have its own learning rate (the stage's
    lr_keys, e.g. train.projector_lr); no weight decay on biases and norms (1-D tensors)."""
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        own = getattr(t, stage.lr_key(name.split(".")[0]))
        lr = t.lr if own is None else own  # an explicit 0 freezes the part; only None means "as train.lr"
        wd = t.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, wd), []).append(p)
    if not groups:
        raise ConfigError(f"stage {stage.name!r} leaves nothing to train (train.stage); "
                          "check train.stage and the lora settings")
    return torch.optim.AdamW([{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()])


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0,
                       decay_ratio: float = 1.0):
    """Linear warmup over `warmup` steps, then a cosine from the peak down to `floor` x peak over the last
    `decay_ratio` share of the steps after warmup; before it the learning rate holds at the peak
    (warmup-stable-decay, as MiniCPM's WSD). 1.0: the cosine starts right after warmup."""
    check_decay_ratio(decay_ratio)
    start = warmup + round((1.0 - decay_ratio) * max(0, total - warmup))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = max(0, step - start) / max(1, total - start)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def check_decay_ratio(ratio: float) -> None:
    if not 0.0 < ratio <= 1.0:
        raise ConfigError(f"train.decay_ratio is {ratio}: it must be in (0, 1] (1.0: a cosine after warmup)")
