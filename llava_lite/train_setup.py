"""What a run is made of: the model with the right parts trainable, the data, the optimizer.

Data: file sources become a `Mixture` (each record once, re-drawn by weight every epoch);
shard sources become a list of shards for `llava_lite.streaming.ShardStream`.

`set_trainable` is the one place that decides what trains in each stage, and it prints it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from .config import Config, ConfigError, LoraConfig
from .conversation import Conversation, DataError
from .data import read_conversations
from .mixture import difficulty, epoch_draw, repeat_counts
from .model import LlavaLite
from .pretrained import from_pretrained
from .streaming import expand_shards


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


def cosine_with_warmup(optimizer: torch.optim.Optimizer, warmup: int, total: int, floor: float = 0.0):
    """Linear warmup over `warmup` steps, then a cosine from the peak down to `floor` x peak."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def source_kind(sources, key: str = "data.sources") -> str:
    """"files" or "shards": check that every source names exactly one of `path` / `shards` and
    that a run does not mix the two (a stream cannot be weighted against files)."""
    if not sources:
        raise ConfigError(f"{key} is empty: give at least one {{path: ...}} or {{shards: ...}} source")
    kinds = []
    for i, src in enumerate(sources):
        if bool(src.path) == bool(src.shards):
            raise ConfigError(f"{key}[{i}] needs exactly one of 'path' (a conversation file) or 'shards' "
                              f"(webdataset shards); got path={src.path!r}, shards={src.shards!r}")
        if not src.weight >= 0 or math.isinf(src.weight):
            raise ConfigError(f"{key}[{i}].weight must be a finite number >= 0, got {src.weight!r}")
        if src.shards:
            if src.weight != 1.0:
                raise ConfigError(f"{key}[{i}].weight={src.weight}: shard sources are streamed once per epoch and "
                                  "cannot be weighted; write the mixture you want into the shards, or use files")
            if src.image_folder:
                raise ConfigError(f"{key}[{i}].image_folder: shards carry their own images")
        kinds.append("shards" if src.shards else "files")
    if len(set(kinds)) > 1:
        raise ConfigError(f"{key} mixes conversation files and shard streams; a run reads one kind "
                          f"(files at {[i for i, k in enumerate(kinds) if k == 'files']}, "
                          f"shards at {[i for i, k in enumerate(kinds) if k == 'shards']})")
    return kinds[0]


def check_data(data) -> str:
    """Check the data config before anything is built; returns the sources' kind."""
    kind = source_kind(data.sources)
    if kind == "shards" and data.curriculum:
        raise ConfigError(f"data.curriculum={data.curriculum!r} orders a whole epoch; shard streams cannot use it")
    if data.shuffle_buffer < 0:
        raise ConfigError(f"data.shuffle_buffer must be >= 0, got {data.shuffle_buffer}")
    if data.eval_sources and source_kind(data.eval_sources, "data.eval_sources") == "shards":
        raise ConfigError("data.eval_sources must be conversation files ('path'), not shards")
    return kind


def source_name(src, i: int) -> str:
    if src.name:
        return src.name
    return os.path.basename(src.path) if src.path else f"shards[{i}]"


@dataclass
class Mixture:
    """Every source's records once, and how each epoch draws from them (`llava_lite.mixture`)."""

    conversations: list[Conversation]  # all sources, concatenated, each record once
    names: list[str]
    sizes: list[int]  # records per source
    counts: list[int]  # records per source in every epoch
    seed: int
    scores: list[list[float]] | None = None  # difficulty per record, for a curriculum

    def epoch(self, epoch: int) -> list[int]:
        """Indices into `conversations` for one epoch, in order (shuffled, or easy to hard)."""
        offsets = [sum(self.sizes[:s]) for s in range(len(self.sizes))]
        return [offsets[s] + i for s, i in epoch_draw(self.sizes, self.counts, self.seed, epoch, self.scores)]

    def __len__(self) -> int:  # records per epoch
        return sum(self.counts)

    def describe(self) -> str:
        parts = [f"{name} {count}/{size}" for name, count, size in zip(self.names, self.counts, self.sizes)]
        return f"{len(self)} records per epoch ({', '.join(parts)}; drawn afresh each epoch)"


def _check_stage(conversations: list[Conversation], stage: str) -> None:
    if stage == "text":
        with_images = [c.where for c in conversations if c.images]
        if with_images:
            raise ValueError(f"stage 'text' got {len(with_images)} record(s) with images, first: {with_images[0]}")


def load_mixture(sources, stage: str, seed: int, curriculum: str | None = None) -> Mixture:
    """Read every file source once; each epoch then draws round(weight * size) records of each
    (see SourceConfig.weight). Text-only stages reject records with images."""
    source_kind(sources)
    convs = [read_conversations(src.path, src.format, src.image_folder) for src in sources]
    conversations = [c for cs in convs for c in cs]
    _check_stage(conversations, stage)
    sizes = [len(cs) for cs in convs]
    counts = repeat_counts(sizes, [src.weight for src in sources])
    empty = [src.path for src, n, c in zip(sources, sizes, counts) if c and not n]
    if empty:
        raise DataError(f"{empty[0]}: the source has a weight but no records")
    if not sum(counts):
        raise ConfigError(f"data.sources: the weights leave no record in an epoch (sizes {sizes}, weights "
                          f"{[src.weight for src in sources]})")
    scores = None
    if curriculum is not None:
        score = difficulty(curriculum)
        scores = [[score(c) for c in cs] for cs in convs]
    return Mixture(conversations, [source_name(s, i) for i, s in enumerate(sources)], sizes, counts, seed, scores)


def load_eval(sources, stage: str) -> list[Conversation]:
    """Eval sources (already checked to be files by `check_data`): every record once, in file
    order (weights do not apply)."""
    conversations = [c for src in sources for c in read_conversations(src.path, src.format, src.image_folder)]
    _check_stage(conversations, stage)
    return conversations


def shard_paths(sources) -> list[str]:
    """Every shard of the shard sources, in order."""
    return [p for i, src in enumerate(sources) for p in expand_shards(src.shards, f"data.sources[{i}].shards")]
