"""Where a run's model comes from, told once: `resolve(cfg)` reads `model.init_from` into a Source,
`load(source, cfg)` builds the model from it.

    Source(kind, path)     kind: fresh | llava-lite | hf-llava | llava-llama | mm-projector

- fresh (no init_from): LlavaLite.build from `model.lm` and `model.vision`, the projector random;
- llava-lite: a llava-lite model directory, LlavaLite.from_pretrained;
- hf-llava / llava-llama: a llava-hf (`LlavaForConditionalGeneration`) or LLaVA `llava_llama`
  directory, imported once (hf_import) into `<train.output_dir>/imported/<hf|llava>-<key>/` with the
  run's data.chat_template applied, then loaded from there like a llava-lite directory;
- mm-projector: LLaVA's stage-1 output (`mm_projector.bin`, alone or with its config.json): a fresh
  model from `model.lm` and `model.vision` with that projector loaded strictly.

Anything else is one ConfigError naming the path and the layouts accepted. `detect` is the only
place a layout is told apart; `import_dir(path, out_dir)` imports any LLaVA layout by hand, and
`model_dir(ref)` turns what `--model` names (chat, eval, serve) into a llava-lite directory.

Why a run's import lives in its output directory and not in a cache shared by runs (as `--model`'s do,
which reference nothing afterwards): a run that
trains LoRA, or only the projector, references its base LM by path, so the imported LM must live as
long as the run directory (deleting the run deletes it; no orphaned 14 GB copy elsewhere), and a
second run or `--resume` in the same directory finds it. The key covers the source path, its files'
sizes and mtimes, dtype, tower and template, so a changed checkpoint or setting imports afresh
instead of silently reusing a stale copy. Under `accelerate launch` one process per machine imports
(into a staging directory, published with one rename) while the others wait, then all load it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from llava_lite.config import Config, ConfigError, VisionConfig
from llava_lite.interop.hf_import import (
    UnsupportedCheckpoint,
    import_hf_llava,
    import_llava_llama,
    load_llava_projector,
    projector_weights,
)
from llava_lite.log import logger
from llava_lite.model.llava import CONFIG_NAME, LlavaLite, read_meta, saved_config

KINDS = ("fresh", "llava-lite", "hf-llava", "llava-llama", "mm-projector")
IMPORTED = ("hf-llava", "llava-llama")  # converted into a llava-lite directory first
LAYOUTS = ("a llava-lite model directory, a llava-hf (LlavaForConditionalGeneration) directory, a LLaVA "
           "llava_llama directory, or LLaVA's stage-1 mm_projector.bin (or its directory)")


@dataclass(frozen=True)
class Source:
    kind: str  # one of KINDS
    path: Path | None = None  # model.init_from, expanded; None when fresh

    def saved_model_config(self) -> dict | None:
        """A llava-lite directory's model settings: its training run's config.json (what that run was
        given) when it holds one, else llava_lite.json's; None for the other kinds."""
        if self.kind != "llava-lite":
            return None
        run_config = self.path / "config.json"
        saved = json.loads(run_config.read_text()).get("model") if run_config.is_file() else None
        if isinstance(saved, dict) and isinstance(saved.get("vision"), dict):
            return saved
        return saved_config(read_meta(self.path))


def detect(path) -> str | None:
    """The layout at `path`: llava-lite | hf-llava | llava-llama | mm-projector, or None."""
    path = Path(path)
    if path.is_file():
        try:
            return "mm-projector" if projector_weights(path) else None
        except Exception:  # not a weights file at all
            return None
    if (path / CONFIG_NAME).is_file():
        return "llava-lite"
    try:
        raw = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    except ValueError:
        raw = {}
    if raw.get("model_type") in ("llava", "llava_next"):
        return "hf-llava"
    if str(raw.get("model_type", "")).startswith("llava_") or "mm_vision_tower" in raw:
        # LLaVA's stage-1 output (config.json + mm_projector.bin, no LM weights) is a projector
        full = any(path.glob("*.safetensors")) or any(path.glob("pytorch_model*.bin"))
        return "mm-projector" if not full and (path / "mm_projector.bin").is_file() else "llava-llama"
    return "mm-projector" if (path / "mm_projector.bin").is_file() else None


def resolve(cfg: Config) -> Source:
    """model.init_from as a Source; a missing path, an unknown layout or a projector without its
    base LM is one ConfigError, before any data is read or weights load."""
    ref = cfg.model.init_from
    if not ref:
        return Source("fresh")
    path = Path(ref).expanduser()
    if not path.exists():
        raise ConfigError(f"model.init_from={ref!r} does not exist (relative paths are relative to {os.getcwd()}); "
                          f"it must be {LAYOUTS}")
    kind = detect(path)
    if kind is None:
        raise ConfigError(f"model.init_from={ref!r} is none of the layouts accepted: {LAYOUTS}")
    if kind == "mm-projector" and not cfg.model.lm:
        raise ConfigError(f"model.init_from={ref!r} holds only LLaVA's stage-1 projector: set model.lm "
                          "(and model.vision) to the base LM and tower it was trained with")
    return Source(kind, path)


def load(source: Source, cfg: Config) -> LlavaLite:
    """The model `source` holds, in cfg.model's dtype and attention (QLoRA: quantized as lora.quantize says)."""
    m = cfg.model
    quantize = cfg.lora.quantize if cfg.lora.enabled else None
    if source.kind in ("fresh", "mm-projector"):
        model = LlavaLite.build(m, quantize=quantize)
        if source.kind == "mm-projector":
            load_llava_projector(model, source.path)
        return model
    directory = source.path if source.kind == "llava-lite" else imported(source, cfg)
    return LlavaLite.from_pretrained(directory, dtype=m.dtype, attn_implementation=m.attn_implementation,
                                     quantize=quantize)


def import_source(source: Source, out_dir, base_cfg=None, vision_tower=None, chat_template: str | None = None) -> Path:
    """Write a llava-hf or llava_llama Source as a llava-lite model directory `out_dir`; returns it."""
    if source.kind == "hf-llava":
        return import_hf_llava(source.path, Path(out_dir), base_cfg, chat_template)
    if source.kind == "llava-llama":
        return import_llava_llama(source.path, Path(out_dir), base_cfg, vision_tower, chat_template)
    if source.kind == "mm-projector":
        raise UnsupportedCheckpoint(f"{source.path} holds only a projector: load it into a model with "
                                    "load_llava_projector(model, path)")
    if source.kind == "llava-lite":
        raise UnsupportedCheckpoint(f"{source.path} is already a llava-lite model directory")
    raise UnsupportedCheckpoint(f"{source.path}: not a llava-lite, llava-hf or LLaVA (llava_llama) directory, "
                                "nor an mm_projector file")


def import_dir(path, out_dir, base_cfg=None, vision_tower=None, chat_template: str | None = None) -> Path:
    """Import the LLaVA checkpoint at `path` (layout detected) into `out_dir`; see import_source."""
    return import_source(Source(detect(path) or "unknown", Path(path)), out_dir, base_cfg, vision_tower, chat_template)


def _vision_tower(vision: VisionConfig):
    """model.vision names the tower in place of a llava_llama checkpoint's mm_vision_tower, when set."""
    default = VisionConfig()
    if vision.model == default.model and vision.pretrained == default.pretrained:
        return None
    if vision.model.startswith("local-dir:"):
        return vision.model
    return (vision.model, vision.pretrained)


def imported(source: Source, cfg: Config) -> Path:
    """The run's import of a llava-hf or llava_llama Source: made once (per machine), then found again."""
    tower = _vision_tower(cfg.model.vision) if source.kind == "llava-llama" else None
    key = _cache_key(source.path, cfg.model.dtype, tower, cfg.data.chat_template)
    out = Path(cfg.train.output_dir) / "imported" / f"{'hf' if source.kind == 'hf-llava' else 'llava'}-{key}"
    from accelerate import PartialState

    with PartialState().local_main_process_first():  # one import per machine; the others then find it
        if not (out / CONFIG_NAME).is_file():
            staging = out.with_name(f".{out.name}.{os.getpid()}")
            shutil.rmtree(staging, ignore_errors=True)
            import_source(source, staging, base_cfg=cfg.model, vision_tower=tower, chat_template=cfg.data.chat_template)
            try:
                os.replace(staging, out)
            except OSError:  # another machine's process (shared file system) published it first
                shutil.rmtree(staging, ignore_errors=True)
            logger.info(f"model.init_from: imported {source.kind} {source.path} into {out}")
    return out


def model_dir(ref) -> Path:
    """What `--model` names (chat, eval, serve), as a llava-lite model directory: itself, or a llava-hf or LLaVA
    llava_llama directory imported once into $LLAVA_LITE_CACHE/imported (else ~/.cache/llava-lite/imported),
    keyed as model.init_from's imports are (path, files' sizes and mtimes), with the directory's own chat
    template; the import is told on stderr. A missing path or another layout is one ConfigError."""
    from llava_lite.model.gguf import cache_root

    path = Path(ref).expanduser()
    kind = detect(path) if path.exists() else None
    if kind == "llava-lite":
        return path
    if kind == "mm-projector":
        raise ConfigError(f"--model {ref!r} holds only LLaVA's stage-1 projector, not a whole model: train stage 2 "
                          f"from it (model.init_from={ref}) or pass a whole model directory")
    if kind not in IMPORTED:
        what = "does not exist" if not path.exists() else "is none of the layouts accepted"
        raise ConfigError(f"--model {ref!r} {what}: it must be a llava-lite model directory, a llava-hf "
                          "(LlavaForConditionalGeneration) directory or a LLaVA llava_llama directory")
    out = cache_root() / "imported" / f"{'hf' if kind == 'hf-llava' else 'llava'}-{_cache_key(path)}"
    if not (out / CONFIG_NAME).is_file():
        staging = out.with_name(f".{out.name}.{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            import_source(Source(kind, path), staging)
            os.replace(staging, out)
        except OSError:  # a concurrent import published it first
            if not (out / CONFIG_NAME).is_file():
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        # on stderr: `llava-lite chat --prompt` keeps stdout for the answer
        print(f"--model: imported {kind} {path} into {out} (once; later runs reuse it)", file=sys.stderr)
    return out


def _cache_key(path: Path, *settings) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return hashlib.sha256(json.dumps([str(path.resolve()), stats, *settings], default=str).encode()).hexdigest()[:12]
