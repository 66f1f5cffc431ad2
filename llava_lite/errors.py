"""The package's own error types, and the up-front check of model references.

    LlavaLiteError           the base: `llava-lite` prints one line `error: <what>, <where>, <how to fix>`
      ConfigError            a config key or value (llava_lite.config)
      DataError              a record, file or image (llava_lite.data.conversation); `reason` is a short
        RenderError          stable label ("empty answer", "path escapes image folder") for reports
      ModelLoadError         a model reference that cannot be loaded (checked before anything is built)
      PromptError            a prompt that cannot be answered as asked (chat, serve, eval): too long for
                             the model's context, or images and placeholders that do not pair up
      FormatError            a model or setting another format cannot hold (export to hf-llava or GGUF, imports)
      BackendError           a kernel or quantization this machine cannot run (flash-attn, bitsandbytes, gguf)

`check_model_refs(cfg)` runs before the trainer builds a model: a local path that does not exist,
or a hub id while HF_HUB_OFFLINE=1 that is not in the local cache, is one line naming the key.
Nothing here imports torch or transformers.
"""
from __future__ import annotations

import os


class LlavaLiteError(Exception):
    """An error whose message is complete for a user: the CLI prints it as one line, no traceback."""


def __getattr__(name: str):
    """`from llava_lite.errors import ConfigError, DataError, RenderError`: the classes live next to
    the code that raises them (config.py, data/conversation.py, data/render.py)."""
    homes = {"ConfigError": "llava_lite.config", "DataError": "llava_lite.data.conversation",
             "RenderError": "llava_lite.data.render"}
    if name in homes:
        import importlib

        return getattr(importlib.import_module(homes[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ModelLoadError(LlavaLiteError, OSError):
    """A model reference (`model.lm`, `model.vision.model`, `model.init_from`, `--model`) that cannot be loaded."""


class PromptError(LlavaLiteError, ValueError):
    """A prompt that cannot be answered as asked; `serve` answers it with HTTP 400, `chat` keeps the session."""


class FormatError(LlavaLiteError, ValueError):
    """A model or setting that another format cannot hold (hf-llava, CLIPVisionModel, open_clip), either way."""


class BackendError(LlavaLiteError, RuntimeError):
    """A kernel, quantization or file format that needs a package or device this machine does not have."""


def _looks_local(ref: str) -> bool:
    return ref.startswith(("/", ".", "~")) or os.sep in ref and ref.count("/") != 1 or ref.endswith(".gguf")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # no hub client: nothing can be fetched, nothing to check against
        return True
    folder = os.path.join(HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    if os.path.isdir(os.path.join(folder, "snapshots")):
        return True
    try:
        return any(r.repo_id == repo_id for r in scan_cache_dir().repos)
    except Exception:  # an unreadable cache is the loader's problem, not this check's
        return False


def check_ref(ref: str | None, key: str, kind: str = "model") -> None:
    """One reference: a local path must exist; a hub id must be cached when offline."""
    if not ref:
        return
    path = os.path.expanduser(ref)
    if _looks_local(ref) or os.path.exists(path):
        if not os.path.exists(path):
            raise ModelLoadError(f"{key}={ref!r}: no such {kind} file or directory; fix the path "
                                 f"(relative paths are relative to the current directory, {os.getcwd()})")
        return
    if _offline() and not _in_hub_cache(ref):
        raise ModelLoadError(f"{key}={ref!r}: not a local path, and HF_HUB_OFFLINE=1 while the hub id is not in the "
                             "cache; download it first (huggingface-cli download ...) or give a local directory")


def check_model_refs(cfg) -> None:
    """Check every model reference of a training config before any weights are loaded."""
    m = cfg.model
    if m.init_from:
        check_ref(m.init_from, "model.init_from", "model")
        # a llava-lite, llava-hf or llava_llama directory names its own LM and tower; LLaVA's
        # mm_projector.bin (a file, or a directory holding one) takes them from model.lm and model.vision.
        # interop.sources.resolve tells the layouts apart and names them all when none fits.
        path = os.path.expanduser(m.init_from)
        if not (os.path.isfile(path) or os.path.isfile(os.path.join(path, "mm_projector.bin"))):
            return
    if not m.lm:
        raise ModelLoadError("model.lm is empty: set it to a transformers directory, a hub id or a .gguf file "
                             "(or model.init_from to a llava-lite model directory)")
    check_ref(m.lm, "model.lm")
    vision = m.vision.model
    if vision.startswith("local-dir:"):
        folder = vision[len("local-dir:"):]
        if not os.path.isfile(os.path.join(os.path.expanduser(folder), "open_clip_config.json")):
            raise ModelLoadError(f"model.vision.model={vision!r}: {folder} holds no open_clip_config.json; "
                                 "fix the path (an open_clip local-dir holds the config and its weights)")
    elif vision.startswith("hf-hub:"):
        check_ref(vision[len("hf-hub:"):], "model.vision.model")
    pretrained = m.vision.pretrained
    if pretrained and _looks_local(pretrained) and not os.path.exists(os.path.expanduser(pretrained)):
        raise ModelLoadError(f"model.vision.pretrained={pretrained!r}: no such checkpoint file; fix the path, "
                             "or use an open_clip tag such as 'openai'")
