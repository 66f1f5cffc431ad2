"""Use a `.gguf` language model (llama.cpp's format) as the LM: convert it once to a plain HF directory.

    lm_dir = convert_gguf("models/SmolLM2-135M-Instruct.Q4_1.gguf")   # then model.lm: <lm_dir>

transformers reads GGUF files itself but dequantizes every weight on each load, and a model
loaded that way refuses `save_pretrained`. `convert_gguf` does the load once, copies the weights
into a fresh model of the same class, and saves it (float32 safetensors, config, generation
config) with the tokenizer and its chat template, in a cache directory keyed by the file's
absolute path, size and mtime. Quantized weights come back dequantized: the converted model
is full precision, not Q4/Q8 (quantize again with lora.quantize for QLoRA).

Cache: `cache_dir`, else `$LLAVA_LITE_CACHE/gguf`, else `~/.cache/llava-lite/gguf`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from llava_lite.errors import BackendError

log = logging.getLogger(__name__)

FLOAT_TYPES = {"F32", "F16", "BF16", "F64"}


def cache_root() -> Path:
    """Where llava-lite caches conversions: $LLAVA_LITE_CACHE, else ~/.cache/llava-lite."""
    root = os.environ.get("LLAVA_LITE_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "llava-lite"


def default_cache_dir() -> Path:
    return cache_root() / "gguf"


def cache_key(path: Path) -> str:
    """Changes when the file is replaced or touched: absolute path, size and mtime (ns)."""
    st = path.stat()
    raw = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def require_gguf():
    try:
        import gguf
    except ImportError:
        gguf = None
    if gguf is None:
        raise BackendError("reading or writing .gguf files needs the gguf package: pip install llava-lite[gguf]")
    return gguf


def quant_summary(path: Path) -> str:
    """'Q4_1 (file type); tensors: 210 Q4_1, 1 Q8_0, 61 F32', from the GGUF header."""
    gguf = require_gguf()
    reader = gguf.GGUFReader(str(path))
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    parts = []
    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            parts.append(gguf.LlamaFileType(int(field.contents())).name.removeprefix("MOSTLY_") + " (file type)")
        except (ValueError, TypeError):
            pass
    parts.append("tensors: " + ", ".join(f"{n} {t}" for t, n in counts.most_common()))
    return "; ".join(parts)


def _convert(path: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the gguf marker that makes save_pretrained refuse
    with torch.device("meta"):
        model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tok.save_pretrained(out)  # tokenizer.json + chat_template.jinja


def convert_gguf(path: str, cache_dir: Path | None = None) -> Path:
    """Convert a `.gguf` LM once into a plain HF directory (model + tokenizer + chat template); return it.

    A second call for the same unchanged file is a cache hit. The directory appears atomically
    (staged in a temporary directory beside it, then renamed), so an interrupted conversion
    leaves no half-written cache entry and concurrent converters agree on one result.
    """
    require_gguf()
    src = Path(path).expanduser()
    if not src.is_file():
        raise FileNotFoundError(f"gguf file {str(path)!r} not found")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache / f"{src.stem}-{cache_key(src)}"
    if final.is_dir():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    log.warning("converting %s to a HF directory %s: quantized weights are dequantized to float32 (%s)",
                src.name, final, quant_summary(src))
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache))
    try:
        _convert(src, stage)
        try:
            os.rename(stage, final)
        except OSError:
            if not final.is_dir():  # not a concurrent converter that finished first
                raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return final
