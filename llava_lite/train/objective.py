"""What a training step minimises, per micro-batch: the trainer sums `objective` over a window of
micro-batches and divides by the window's `count` over all processes (train/recipe.py).

    obj = build_objective(cfg, stage, model, acc)   # after accelerate.prepare
    objective, stats = obj(ddp_model, inputs)        # a scalar sum, and detached sums to log
    obj.count(batch)                                 # what the sums are per: tokens or pairs

Supervised stages (align, instruct, text): the CE summed over supervised tokens (+ kl_to_base x
KL to the starting model, kl.py), per supervised token, so a short answer weighs what its tokens
weigh. Preference training: the DPO-family loss summed over pairs, per pair (preference.py).
`stats` always holds "loss" (what eval_loss and the loss plot read); `keys` names every stat a
training step logs.
"""
from __future__ import annotations

import torch
from accelerate.utils import DistributedType

from llava_lite.config import Config, ConfigError
from llava_lite.constants import IGNORE_INDEX


class SupervisedObjective:
    unit = "supervised_tokens"

    def __init__(self, kl=None):
        self.kl = kl  # kl.KLToBase, or None: the plain CE
        self.keys = ("loss", "kl") if kl is not None else ("loss",)  # the stats a step logs

    def count(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def __call__(self, model, inputs: dict, train: bool = True) -> tuple[torch.Tensor, dict]:
        kl = self.kl if train else None
        if kl is not None:
            kl.arm()  # the head's logits of this forward are kept for the KL
        out = model(**inputs)
        objective, stats = out.loss_sum, {"loss": out.loss_sum.detach()}
        if kl is not None:  # KL(base || tuned), logged apart from the CE `loss`
            kl_sum = kl.kl_sum(inputs)
            stats["kl"] = kl_sum.detach()
            objective = objective + kl.beta * kl_sum
        return objective, stats


def build_objective(cfg: Config, stage: str, model, acc):
    """The stage's objective; `model` is the unwrapped model (a reference is built from it before a
    checkpoint loads, so it is the starting model on resume too)."""
    needs_reference = stage == "preference" or cfg.train.kl_to_base > 0
    if needs_reference and acc.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        what = "train.stage=preference" if stage == "preference" else "train.kl_to_base > 0"
        raise ConfigError(f"{what} needs the whole model on each process (one process or DDP), not DeepSpeed or "
                          "FSDP: its reference model runs beside the one that trains")
    if stage == "preference":
        from llava_lite.train.preference import PreferenceObjective

        if cfg.train.kl_to_base > 0:
            raise ConfigError("train.kl_to_base is for supervised stages; preference training already holds the "
                              "model to its reference (preference.beta)")
        return PreferenceObjective(model, cfg.preference, cfg.model.dtype)
    if cfg.train.kl_to_base > 0:
        from llava_lite.train.kl import KLToBase

        return SupervisedObjective(KLToBase(model, cfg.train.kl_to_base, cfg.model.dtype))
    return SupervisedObjective()
