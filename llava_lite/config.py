"""Run configuration: dataclasses are the schema, YAML files fill them, dotted overrides tweak them.

    cfg = load_config("configs/stage2.yaml", ["train.lr=2e-5", "data.max_length=1024"])

Every key is checked against the schema: an unknown key or a value of the wrong type is an error
naming the key. The resolved config is written beside every checkpoint (`save_config`).
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from llava_lite.errors import LlavaLiteError


class ConfigError(LlavaLiteError, ValueError):
    """A config key or value that is wrong; the message names the key."""


@dataclass
class AnyresConfig:
    """LLaVA-NeXT's AnyRes (model/anyres.py): an image becomes base-size tiles of its best-fitting
    resolution plus the whole image downscaled; its image tokens grow with its size."""
    grid_pinpoints: Optional[list[list[int]]] = None  # [[height, width], ...] px, multiples of the tower's size
    max_tiles: int = 4  # without grid_pinpoints: every rows x cols grid with rows * cols <= max_tiles


@dataclass
class VisionConfig:
    model: str = "ViT-L-14-336-quickgelu"  # open_clip name, or "local-dir:/path" (open_clip_config.json + weights)
    pretrained: Optional[str] = "openai"  # open_clip tag or a local checkpoint file; None = as the model ref says
    layer: int = -2  # which transformer block's output feeds the projector (LLaVA: penultimate)
    use_cls: bool = False  # keep the CLS token as an extra image token
    pad_to_square: bool = False  # LLaVA-1.5 pads images to a square with the mean colour before resizing
    pixel_shuffle: int = 1  # r > 1 merges each r x r block of patches into one token (r*r fewer image tokens)
    normalize: bool = False  # apply the ViT's final LayerNorm to the chosen block's features (well-scaled inputs)
    anyres: Optional[AnyresConfig] = None  # high resolution as LLaVA-NeXT: tiles + the downscaled image


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: str = "mlp2x_gelu"  # linear | mlp2x_gelu | mlpNx_gelu
    lm: str = ""  # any AutoModelForCausalLM id or local directory
    init_from: Optional[str] = None  # a llava-lite model directory to start from (stage 2 <- stage 1 output)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    # How prompts are built, saved with the model so chat, eval, serve and export build them alike:
    # "chat" (the tokenizer's template) or "plain" (stage-1: image then caption). A training run sets
    # both from data.mode (else the stage's) and data.system_prompt.
    render_mode: Literal["chat", "plain"] = "chat"
    system_prompt: Optional[str] = None


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: Any = "all-linear"  # peft's "all-linear" or a list of module names
    quantize: Optional[Literal["4bit", "8bit"]] = None  # QLoRA (bitsandbytes + CUDA)


@dataclass
class SourceConfig:
    """One training data source: a conversation file (`path`) or webdataset shards (`shards`).

    weight: a repeat factor per epoch, re-drawn every epoch from (train.seed, epoch). The source
    gives round(weight * records) records to each epoch: whole passes over a fresh shuffle
    first, then a fresh random subset for the fraction. 2.5 = every record twice plus a
    different random half each epoch; 0.5 = a different half each epoch; 0 = unused. A list is a
    schedule, one weight per epoch, the last holding on: [0, 0.1] = left out of the first epoch. A
    general-text source with a weight is the replay source (against forgetting): documents ({"text":
    ...}, format "text", all supervised) or text conversations. Shards take every sample once an epoch.
    """

    path: str = ""  # a JSON list or JSONL file of conversations
    # instead of path: "dir/shard-{000000..000003}.tar", a glob, or a list
    shards: Optional[Union[str, list[str]]] = None
    name: Optional[str] = None  # shown in the mixture log (default: the file name)
    format: Literal["auto", "llava", "sharegpt", "alpaca", "openai", "pairs", "text"] = "auto"  # text: plain docs
    image_folder: Optional[str] = None  # default: the file's own directory (shards carry their images)
    weight: Union[float, list[float]] = 1.0  # repeat factor per epoch, or one per epoch (see above)
    # Records of independent questions about one image (short-answer VQA): train each question
    # alone, attending to the shared image prefix and itself only, so no answer is read from
    # another turn (data/isolate.py). Not for conversations whose turns build on each other.
    isolate_turns: bool = False


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    eval_sources: list[SourceConfig] = field(default_factory=list)  # files; every record once (weights ignored)
    # How records are rendered; default: the stage's (align: plain, instruct and text: chat).
    # plain: image then caption, no template (stage-1 alignment); chat: the tokenizer's template.
    mode: Optional[Literal["chat", "plain"]] = None
    max_length: int = 2048
    # Padding-free packing: each batch's samples share rows of up to max_length tokens, attention
    # never crossing samples (data/packing.py). Same samples per step, same loss, less padding.
    packing: bool = False
    system_prompt: Optional[str] = None
    # vicuna_v1 | llava_llama_2 | mistral_instruct | chatml | path/to/template.jinja; overrides the tokenizer's
    chat_template: Optional[str] = None
    num_workers: int = 0
    # Order within an epoch. null: shuffled (length-grouped per train.group_by_modality_length).
    # "length" | "tags": easy to hard by a difficulty score (text length, an image counting as
    # 500 characters; or the number of skill tags the data tools' heuristic tagger finds). Batches
    # are then cut in that order (still one modality per batch) and not shuffled; the draw of
    # which records make the epoch stays random. Not for shard streams.
    curriculum: Optional[Literal["length", "tags"]] = None
    # Shard streams: samples pass through a shuffle buffer of this many (seeded by train.seed,
    # epoch and reader) and the shard order is shuffled each epoch; 0 keeps the stored order.
    shuffle_buffer: int = 1000
    # Structurally bad records (unknown role, empty answer, placeholder mismatch, a path outside the
    # image folder...): "error" reports them all before any weights load; "skip" drops them and
    # writes rejects.jsonl in the run directory. Unreadable images found mid-run are always skipped.
    on_bad_record: Literal["error", "skip"] = "error"
    max_bad_fraction: float = 0.01  # more bad records than this (structural + images) stops the run
    allow_absolute_image_paths: bool = False  # let image paths be absolute or leave image_folder


@dataclass
class TrainConfig:
    stage: Literal["align", "instruct", "text", "preference"] = "instruct"
    output_dir: str = "runs/llava-lite"
    epochs: float = 1.0
    max_steps: int = -1  # > 0 caps the number of optimizer steps
    batch_size: int = 16  # micro-batch per process
    grad_accum: int = 1
    lr: float = 2e-5
    projector_lr: Optional[float] = None  # default: lr
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    decay_ratio: float = 1.0  # the cosine's share of the steps after warmup; the peak holds before it (WSD)
    max_grad_norm: float = 1.0
    gradient_checkpointing: bool = False
    group_by_modality_length: bool = True
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    # accelerate trackers: tensorboard, wandb, ... (logs in output_dir/logs)
    report_to: list[str] = field(default_factory=list)
    keep_last: int = 2
    log_every: int = 10
    eval_every: int = 0
    seed: int = 0
    # Against forgetting: loss = CE + kl_to_base * KL(base || tuned), the KL summed over the supervised
    # positions of every batch (text-only and replay batches too) and averaged like the CE. Direction: base ->
    # tuned ("forward" KL, distillation from the base, as in Learning without Forgetting): it penalises the tuned
    # model for dropping probability the base gave to other continuations, so the base's alternatives (its
    # skills) stay covered while the target token still gains mass; reverse KL (RLHF's) is mode-seeking and would
    # let them go. The base under LoRA is the same LM with its adapters disabled (no second copy), under full
    # fine-tuning a frozen copy of the starting LM in model.dtype; the starting projector is kept frozen too.
    # 0 = off, exactly the plain loss. Logged apart from the CE as `kl` (llava_lite/train/kl.py).
    kl_to_base: float = 0.0


@dataclass
class PreferenceConfig:
    """Preference training (train.stage=preference; train/preference.py)."""

    beta: float = 0.1  # strength of the pull toward the reference (DPO's beta)
    # sigmoid: DPO; ipo: IPO on length-averaged log-probs; either + rpo_alpha * chosen NLL = RPO
    loss: Literal["sigmoid", "ipo"] = "sigmoid"
    rpo_alpha: float = 0.0  # weight of the chosen answer's per-token NLL (0 = off)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)


def _cast(value: Any, tp: Any, key: str) -> Any:
    """Check or convert `value` to the annotated type `tp`; `key` names it in errors."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _cast(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key {key!r}: {value!r} is not one of {typing.get_args(tp)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_cast(v, item, f"{key}.{i}") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML reads "2e-5" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"config key {key!r}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s): {sorted(prefix + k for k in unknown)}; known: {sorted(names)}")
    return cls(**{k: _cast(v, hints[k], prefix + k) for k, v in data.items()})


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_override(raw: dict, override: str) -> None:
    """Set `a.b.c=value` in a raw (dict) config; the value is parsed as YAML ("2e-5", "true", "[a, b]")."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form key.path=value")
    key, text = override.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for p in parts[:-1]:
        if isinstance(node, list):
            node = node[int(p)]
        else:
            if node.get(p) is None:  # an optional section left null (model.vision.anyres) becomes a mapping
                node[p] = {}
            node = node[p]
    last = parts[-1]
    value = yaml.safe_load(text) if text.strip() else ""
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    raw: dict = {}
    if path is not None:
        path = Path(path)
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        base = path.parent
        # Relative data/model paths in a config file are relative to the file, so configs can travel.
        for src in raw.get("data", {}).get("sources", []) + raw.get("data", {}).get("eval_sources", []):
            for k in ("path", "image_folder", "shards"):
                value = src.get(k) if isinstance(src, dict) else None
                if isinstance(value, str) and value.startswith("./"):
                    src[k] = str(base / value)
                elif isinstance(value, list):
                    src[k] = [str(base / v) if isinstance(v, str) and v.startswith("./") else v for v in value]
    full = to_dict(Config())
    _merge(full, raw)
    for o in overrides:
        apply_override(full, o)
    return from_dict(Config, full)


def _merge(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(json.dumps(to_dict(cfg), indent=2))
