"""The model a training run starts from, in three steps:

    source = resolve(cfg)                  model.init_from's layout, told once (interop/sources.py)
    model = load(source, cfg)              fresh, a llava-lite directory, an import, or LLaVA's projector
    prepare_for_stage(model, cfg, ...)     the run's chat template, prompt mode, LoRA

`reconcile_init_from(cfg, source)` runs first, before any weights load: a stage-2 run loads the
stage-1 directory's tower, projector and LM, so its own model settings can only mean the same
thing, or be preprocessing that is safe to change (`vision.pad_to_square`). Each vision, projector
and LM field of the run's config

- equals the directory's (its run `config.json`, else `llava_lite.json`): fine;
- is left at the schema default: it takes the directory's value, so the saved `config.json`
  records what was used;
- is `vision.pad_to_square` or `vision.anyres`: applied to the loaded tower (by prepare_for_stage;
  AnyRes on a model trained without it adds a new image_newline to its projector);
- otherwise: one ConfigError naming every such field.
"""
from __future__ import annotations

from pathlib import Path

from llava_lite.config import AnyresConfig, Config, ConfigError, ModelConfig, from_dict
from llava_lite.data.templates import set_chat_template
from llava_lite.interop.sources import IMPORTED, Source, load, resolve
from llava_lite.model.llava import LlavaLite
from llava_lite.model.lm import apply_lora, is_peft, resize_embeddings
from llava_lite.model.projector import AnyresProjector

CHECKED = ("model", "pretrained", "layer", "use_cls", "pixel_shuffle", "normalize")  # vision fields that shape features
APPLIED = ("pad_to_square",)  # preprocessing: safe to change on a trained model


def build_model(cfg: Config, mode: str, source: Source | None = None) -> LlavaLite:
    """The run's model: `source` (default: resolve(cfg)) loaded, then prepared for the stage."""
    source = source or resolve(cfg)
    return prepare_for_stage(load(source, cfg), cfg, source, mode)


def prepare_for_stage(model: LlavaLite, cfg: Config, source: Source, mode: str) -> LlavaLite:
    """Fit a loaded model to this run: a continued LoRA run's adapters merged, the chat template
    (saved with the tokenizer, so chat, serve and export use it too; an import applied it already),
    the embeddings grown for its markers, vision.pad_to_square, the prompt mode and system prompt
    (saved with the model), and LoRA for a stage that trains the LM."""
    if is_peft(model.lm):  # a LoRA run continues from merged weights
        model.lm = model.lm.merge_and_unload()
    if cfg.data.chat_template and source.kind not in IMPORTED:
        set_chat_template(model.tokenizer, cfg.data.chat_template)
        resize_embeddings(model.lm, len(model.tokenizer))  # chatml may have added its markers
    if source.kind == "llava-lite":  # preprocessing settled by reconcile_init_from
        model.cfg.vision.pad_to_square = cfg.model.vision.pad_to_square
        use_anyres(model, cfg.model.vision.anyres)
    model.cfg.render_mode, model.cfg.system_prompt = mode, cfg.data.system_prompt
    if cfg.lora.enabled and cfg.train.stage != "align":
        model.lm = apply_lora(model.lm, cfg.lora, cfg.train.gradient_checkpointing)
    return model


def use_anyres(model: LlavaLite, anyres: AnyresConfig | None) -> None:
    """AnyRes on a model trained without it (as LLaVA-NeXT starts from LLaVA-1.5's projector): the same
    tower and projector, tiles from now on, and a new learned image_newline; or other pinpoints."""
    if anyres is None or anyres == model.vision.cfg.anyres:
        return
    model.vision.set_anyres(anyres)
    if isinstance(model.projector, AnyresProjector):
        model.projector.layout = model.vision.anyres
    else:
        device = next(model.projector.parameters()).device
        model.projector = AnyresProjector(model.projector, model.lm.config.hidden_size, model.vision.anyres).to(device)


def _same(a, b) -> bool:
    norm = lambda x: str(Path(x).resolve()) if isinstance(x, str) and x and Path(x).exists() else x
    return a == b or norm(a) == norm(b)


def reconcile_init_from(cfg: Config, source: Source) -> list[str]:
    """Check (and fill) cfg.model against the llava-lite directory `source`; returns what was applied,
    for the log. Other sources have no saved run settings to check: nothing to do."""
    saved = source.saved_model_config()
    if saved is None:
        return []
    src = source.path
    default, model = ModelConfig(), cfg.model
    conflicts, applied = [], []

    def settle(key: str, mine, theirs, dflt, apply: bool = False):
        if _same(mine, theirs) or mine == dflt:
            return theirs
        if apply:
            applied.append(f"model.{key}={mine!r} applied over {src}'s {theirs!r}")
            return mine
        conflicts.append(f"model.{key}={mine!r} ({src} has {theirs!r})")
        return mine

    for name in CHECKED + APPLIED:
        dflt = getattr(default.vision, name)
        mine, theirs = getattr(model.vision, name), saved["vision"].get(name, dflt)
        setattr(model.vision, name, settle(f"vision.{name}", mine, theirs, dflt, name in APPLIED))
    theirs = saved["vision"].get("anyres")  # tiling is preprocessing: AnyRes can be turned on, or re-pinned
    theirs = from_dict(AnyresConfig, theirs) if isinstance(theirs, dict) else theirs
    model.vision.anyres = settle("vision.anyres", model.vision.anyres, theirs, None, apply=True)
    model.projector = settle("projector", model.projector, saved["projector"], default.projector)
    model.lm = settle("lm", model.lm, saved["lm"], default.lm)
    if conflicts:
        raise ConfigError(f"model.init_from={src} loads its own tower, projector and LM, so these settings would be "
                          f"ignored: {'; '.join(conflicts)}. Leave them out or set them as in {src}")
    return applied
