"""The pretrained parts a LlavaLite is made of, loaded the same way for training, chat and eval:
the tokenizer (with the `<image>` token), the causal LM (a transformers directory or hub id, or a
`.gguf` file converted once; attention kernel, optional 4/8-bit quantization, embeddings grown
for new tokens), LoRA adapters, and the dtype table.

The vision tower's class lives in `vision.py`; the projector's in `projector.py`.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava_lite.config import LoraConfig, ModelConfig
from llava_lite.constants import IMAGE_TOKEN
from llava_lite.errors import BackendError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BF16_EMULATED = ("this CPU has no native bf16 (AVX-512 BF16 or AMX): bf16 matmuls are emulated, about 20x slower "
                 "than float32 (measured on an AVX2-only EPYC); set model.dtype=float32")


@functools.cache  # asked per autocast by the demo's pre-training loops; the CPU does not change
def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), so bf16 autocast pays on it."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                      "_is_amx_tile_supported"))




def pick_attention(requested: str, dtype: torch.dtype, device: str | torch.device | None = None) -> str:
    """flash_attention_2 when asked for (or 'auto') and usable: flash-attn installed and the model
    CUDA-resident in bf16/fp16 (`device`; None = where training puts it: cuda when available).
    SDPA otherwise."""
    if requested not in ("auto", "flash_attention_2"):
        return requested
    on_cuda = torch.device(device).type == "cuda" if device is not None else torch.cuda.is_available()
    usable = on_cuda and torch.cuda.is_available() and dtype in (torch.bfloat16, torch.float16)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        usable = False
    if requested == "flash_attention_2" and not usable:
        raise BackendError("model.attn_implementation=flash_attention_2 needs a CUDA GPU, bf16/fp16 and "
                           "`pip install llava-lite[flash]`; use auto or sdpa")
    return "flash_attention_2" if usable else "sdpa"


def resolve_lm(path: str) -> str:
    """A `.gguf` file becomes a plain HF directory (converted once, cached); anything else is as given."""
    if path.endswith(".gguf"):
        from llava_lite.model.gguf import convert_gguf

        return str(convert_gguf(path))
    return path


def load_tokenizer(path: str):
    tok = AutoTokenizer.from_pretrained(resolve_lm(path))
    if IMAGE_TOKEN not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padded positions are masked out and never supervised
    return tok


def load_lm(path: str, cfg: ModelConfig, vocab_size: int, quantize: str | None = None,
            device: str | torch.device | None = None) -> nn.Module:
    dtype = DTYPES[cfg.dtype]
    kwargs = dict(dtype=dtype, attn_implementation=pick_attention(cfg.attn_implementation, dtype, device))
    if quantize:
        kwargs["quantization_config"] = _bnb_config(quantize, dtype)
    lm = AutoModelForCausalLM.from_pretrained(resolve_lm(path), **kwargs)
    resize_embeddings(lm, vocab_size)
    return lm


def _bnb_config(bits: str, dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise BackendError("QLoRA (lora.quantize) needs bitsandbytes and a CUDA GPU: "
                           "pip install llava-lite[qlora]") from e
    if not torch.cuda.is_available():
        raise BackendError("QLoRA (lora.quantize) needs a CUDA GPU; run LoRA without quantize on CPU")
    from transformers import BitsAndBytesConfig

    if bits == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


@torch.no_grad()
def resize_embeddings(lm: nn.Module, vocab_size: int) -> None:
    """Grow the vocabulary for new special tokens; new rows = mean of old rows (deterministic, so
    reloading a LoRA adapter over the base model rebuilds exactly the same rows)."""
    old = lm.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    for emb in {id(m): m for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m is not None}.values():
        emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)


def apply_lora(lm: nn.Module, lora: LoraConfig, gradient_checkpointing: bool) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model, prepare_model_for_kbit_training

    if lora.quantize:
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=gradient_checkpointing)
    peft_cfg = PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(lm, peft_cfg)


def is_peft(lm: nn.Module) -> bool:
    """Whether the LM carries peft (LoRA) adapters."""
    return hasattr(lm, "peft_config")
