"""`llava-lite train CONFIG --dry-run`: what trains and roughly what it needs per GPU, from the config
alone. The LM and the vision tower are built on the meta device (config files only, no weights).

Per-GPU memory under an engine over N GPUs (bytes per parameter):

| part                 | ddp | zero2 | zero3 / fsdp2 |
|----------------------|-----|-------|---------------|
| frozen weights       | d   | d     | d / N         |   d = 2 (bf16/fp16) or 4; 4-bit QLoRA LM linears 0.5625
| trainable weights    | 4   | 4     | 4 / N         |   fp32 masters (the trainer keeps trainable weights fp32)
| gradients            | 4   | 4 / N | 4 / N         |
| AdamW state          | 8   | 8 / N | 8 / N         |

Activations (rough, per GPU): batch_size x max_length tokens through the LM: with gradient
checkpointing each layer keeps its input (2 x hidden bytes per token, bf16) and one layer's full
activations live at a time (~34 x hidden bytes per token, SDPA/flash: no T x T scores); without it
every layer keeps ~34 x hidden bytes per token; plus fp32 logits of the supervised positions
(taken as half the tokens) and the vision tower's activations (frozen: forward only, one block).
A guide for the question "does it fit", not a measurement: allocator overhead, CUDA context
(~0.5-1 GiB) and fragmentation come on top.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from torch import nn

from llava_lite.config import Config, ConfigError
from llava_lite.errors import ModelLoadError

GIB = 1024**3
ENGINES = ("ddp", "zero2", "zero3", "fsdp2")


@dataclass
class Plan:
    counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # part -> (trainable, frozen)
    memory: dict[str, float] = field(default_factory=dict)  # what -> GiB per GPU
    engine: str = "ddp"
    gpus: int = 1

    @property
    def total_gib(self) -> float:
        return sum(self.memory.values())


def _meta_model(cfg: Config):
    """The run's LlavaLite on the meta device (model/random.py): shapes from the LM's config.json and the
    tower's name, no weights."""
    from transformers import AutoConfig

    from llava_lite.model.lm import resolve_lm
    from llava_lite.model.random import random_llava

    try:
        lm_cfg = AutoConfig.from_pretrained(resolve_lm(cfg.model.lm))
    except OSError as e:
        raise ModelLoadError(f"model.lm={cfg.model.lm!r}: cannot read its config.json ({str(e).splitlines()[0]}); "
                             "a dry run needs only the LM's config: give a directory holding it, e.g. "
                             "model.lm=configs/shapes/vicuna-7b") from None
    shapes = dataclasses.replace(cfg.model, vision=dataclasses.replace(cfg.model.vision, pretrained=None))
    return random_llava(shapes, lm_cfg, device="meta")


def _lora_params(lm: nn.Module, cfg: Config) -> int:
    targets = cfg.lora.target_modules
    out_head = lm.get_output_embeddings()
    n = 0
    for name, m in lm.named_modules():
        if not isinstance(m, nn.Linear) or m is out_head:
            continue
        if targets != "all-linear" and not any(name.endswith(t) for t in targets):
            continue
        n += cfg.lora.r * (m.in_features + m.out_features)
    return n


def _new_rows(cfg: Config, lm: nn.Module) -> int:
    """Parameters added when the vocabulary grows for <image> (and template markers): the tokenizer's
    files are read if present, else one new token is assumed."""
    try:
        from llava_lite.model.lm import load_tokenizer

        vocab = len(load_tokenizer(cfg.model.lm))
    except (OSError, ValueError):
        vocab = lm.config.vocab_size + 1
    extra = max(0, vocab - lm.get_input_embeddings().weight.shape[0])
    tied = lm.get_output_embeddings() is None or lm.config.tie_word_embeddings
    return extra * lm.config.hidden_size * (1 if tied else 2)


def plan(cfg: Config, engine: str = "ddp", gpus: int = 1) -> Plan:
    from llava_lite.train.stages import STAGES

    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {ENGINES}, got {engine!r}")
    model = _meta_model(cfg)
    visual, projector, lm, patches = model.vision.visual, model.projector, model.lm, model.image_seq_len
    count = lambda m: sum(p.numel() for p in m.parameters())
    stage, lora = STAGES[cfg.train.stage], cfg.lora.enabled and cfg.train.stage != "align"
    n_vision, n_proj, n_lm = count(visual), count(projector), count(lm) + _new_rows(cfg, lm)
    lm_trainable = (_lora_params(lm, cfg) if lora else n_lm) if "lm" in stage.trains else 0
    p = Plan(engine=engine, gpus=gpus)
    p.counts = {"vision": (0, n_vision), "projector": (n_proj, 0) if "projector" in stage.trains else (0, n_proj),
                "lm" + (" (lora)" if lora else ""): (lm_trainable, n_lm if lora or not lm_trainable else 0)}
    d = 4 if cfg.model.dtype == "float32" else 2
    frozen_bytes = (n_vision + (0 if "projector" in stage.trains else n_proj)) * d
    lm_frozen = p.counts[next(k for k in p.counts if k.startswith("lm"))][1]
    if lora and cfg.lora.quantize:  # decoder linears in 4 (8) bit + quantization constants; the rest stays d
        linears = sum(m.weight.numel() for m in lm.get_decoder().modules() if isinstance(m, nn.Linear))
        per = 0.5625 if cfg.lora.quantize == "4bit" else 1.0625
        frozen_bytes += linears * per + (lm_frozen - linears) * d
    else:
        frozen_bytes += lm_frozen * d
    trainable = n_proj * ("projector" in stage.trains) + lm_trainable
    shard_w = gpus if engine in ("zero3", "fsdp2") else 1
    shard_go = gpus if engine != "ddp" else 1
    p.memory = {"frozen weights": frozen_bytes / shard_w / GIB,
                "trainable weights (fp32)": trainable * 4 / shard_w / GIB,
                "gradients (fp32)": trainable * 4 / shard_go / GIB,
                "AdamW state (fp32)": trainable * 8 / shard_go / GIB}
    if stage.pairs or cfg.train.kl_to_base > 0:  # the reference (train/reference.py): under LoRA the same LM
        p.memory["reference model"] = ((0 if lora else n_lm * d) + n_proj * 4) / shard_w / GIB
    c = lm.config
    rows = cfg.train.batch_size * (2 if stage.pairs else 1)  # a preference pair is two rows
    tokens = rows * cfg.data.max_length
    layers, hidden = c.num_hidden_layers, c.hidden_size
    per_layer = 34 * hidden * tokens
    act = layers * 2 * hidden * tokens + per_layer if cfg.train.gradient_checkpointing else layers * per_layer
    act += tokens / 2 * c.vocab_size * 4 * 2  # fp32 logits of the supervised positions and their gradient
    act += cfg.train.batch_size * patches * model.vision.width * 34  # one ViT block, forward only (once per pair)
    p.memory["activations (rough)"] = act / GIB
    return p


def format_plan(p: Plan, cfg: Config) -> str:
    lines = [f"dry run: stage {cfg.train.stage}, {p.engine} on {p.gpus} GPU(s), dtype {cfg.model.dtype}, "
             f"batch {cfg.train.batch_size} x max_length {cfg.data.max_length}, gradient checkpointing "
             f"{'on' if cfg.train.gradient_checkpointing else 'off'}",
             "", "| part | trainable | frozen |", "|---|---|---|"]
    lines += [f"| {k} | {t:,} | {f:,} |" for k, (t, f) in p.counts.items()]
    lines += ["", "| per GPU | GiB |", "|---|---|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in p.memory.items()]
    lines.append(f"| total | {p.total_gib:.2f} |")
    return "\n".join(lines)


def fits(p: Plan, gib_per_gpu: float, overhead: float = 1.0) -> bool:
    return p.total_gib + overhead <= gib_per_gpu and math.isfinite(p.total_gib)


def table(lm_shape: str, configs: str = "configs") -> str:
    """The README's table: the shipped stage configs over a given LM (a directory with its config.json
    is enough, e.g. configs/shapes/vicuna-7b), on the usual machines; GiB per GPU, "(no)" = does not fit."""
    from llava_lite.config import load_config

    common = [f"model.lm={lm_shape}", "model.init_from=null", "model.vision.model=ViT-L-14-336-quickgelu",
              "data.max_length=2048", "train.gradient_checkpointing=true"]
    rows = [("stage 1 (projector)", "stage1.yaml", []), ("stage 2 full", "stage2.yaml", []),
            ("stage 2 LoRA r128", "stage2_lora.yaml", []),
            ("stage 2 QLoRA 4-bit r128", "stage2_lora.yaml", ["lora.quantize=4bit"])]
    machines = [("8x80GB ZeRO-3, b16", "zero3", 8, 16, 80), ("8x80GB DDP, b16", "ddp", 8, 16, 80),
                ("1x80GB, b16", "ddp", 1, 16, 80), ("1x80GB, b4", "ddp", 1, 4, 80), ("1x24GB, b1", "ddp", 1, 1, 24)]
    out = ["| run | trainable | " + " | ".join(m[0] for m in machines) + " |", "|---|---|" + "---|" * len(machines)]
    for name, path, extra in rows:
        cells = []
        for _, engine, gpus, batch, cap in machines:
            p = plan(load_config(f"{configs}/{path}", common + extra + [f"train.batch_size={batch}"]), engine, gpus)
            cells.append(f"{p.total_gib:.1f}" + ("" if fits(p, cap) else " (no)"))
        trainable = sum(t for t, _ in p.counts.values())
        out.append(f"| {name} | {trainable / 1e6:,.0f}M | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    print(table(sys.argv[1] if len(sys.argv) > 1 else "configs/shapes/vicuna-7b"))
