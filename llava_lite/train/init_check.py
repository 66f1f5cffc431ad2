"""`model.init_from`: a run's model settings against the directory it starts from.

A stage-2 run loads the stage-1 directory's tower, projector and LM, so its own model settings can
only mean the same thing, or be preprocessing that is safe to change (`vision.pad_to_square`). Each
vision, projector and LM field of the run's config

- equals the directory's (its run `config.json`, else `llava_lite.json`): fine;
- is left at the schema default: it takes the directory's value, so the saved `config.json`
  records what was used;
- is `vision.pad_to_square`: applied to the loaded tower;
- otherwise: one ConfigError naming every such field, before any data is read or model is built.
"""
from __future__ import annotations

import json
from pathlib import Path

from llava_lite.config import Config, ConfigError, ModelConfig

CHECKED = ("model", "pretrained", "layer", "use_cls", "pixel_shuffle", "normalize")  # vision fields that shape features
APPLIED = ("pad_to_square",)  # preprocessing: safe to change on a trained model


def _same(a, b) -> bool:
    norm = lambda x: str(Path(x).resolve()) if isinstance(x, str) and x and Path(x).exists() else x
    return a == b or norm(a) == norm(b)


def reconcile_init_from(cfg: Config) -> list[str]:
    """Check (and fill) cfg.model against cfg.model.init_from; returns what was applied, for the log."""
    src = Path(cfg.model.init_from).expanduser()
    run_config, meta = src / "config.json", src / "llava_lite.json"
    if not meta.is_file():
        return []  # another layout (llava-hf, llava_llama, mm_projector.bin): init_from.resolve_init_from
    saved = json.loads(run_config.read_text()).get("model") if run_config.is_file() else None
    if not isinstance(saved, dict) or not isinstance(saved.get("vision"), dict):  # not a run's config
        saved = json.loads(meta.read_text())["model"]
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
        value = settle(f"vision.{name}", getattr(model.vision, name), saved["vision"].get(name, dflt), dflt, name in APPLIED)
        setattr(model.vision, name, value)
    model.projector = settle("projector", model.projector, saved["projector"], default.projector)
    model.lm = settle("lm", model.lm, saved["lm"], default.lm)
    if conflicts:
        raise ConfigError(f"model.init_from={src} loads its own tower, projector and LM, so these settings would be "
                          f"ignored: {'; '.join(conflicts)}. Leave them out or set them as in {src}")
    return applied
