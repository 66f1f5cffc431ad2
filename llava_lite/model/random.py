"""Random models from shapes alone: nothing downloaded, no weights read. Used by the bench
(bench/setup.py, bench/gpu_check.py), the dry run (train/dry_run.py, on the meta device) and the
tests' tiny LM.

    random_lm(lm_config, dtype, device)          a causal LM from its transformers config
    random_llava(cfg, lm_config, tokenizer)      a LlavaLite: that LM -> tower -> projector (llava.assemble)

Weights come from the current RNG (seed it first): the LM is drawn on `device`, the tower and
projector on the CPU and then moved, as LlavaLite.build draws them.
"""
from __future__ import annotations

import torch
from torch import nn

from llava_lite.config import ModelConfig
from llava_lite.model.llava import LlavaLite, assemble
from llava_lite.model.lm import DTYPES


class IdsOnly:
    """What LlavaLite needs of a tokenizer to run on token ids: the image token's id."""

    def __init__(self, image_id: int):
        self.image_id = image_id

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.image_id


def random_lm(lm_config, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
              attn: str = "sdpa") -> nn.Module:
    """A causal LM made in fp32 with SDPA (flash-attn refuses a model made in fp32), then cast to
    `dtype` and switched to `attn`. device "meta": shapes only, no memory."""
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        lm = AutoModelForCausalLM.from_config(lm_config, attn_implementation="sdpa").to(dtype)
    if attn != "sdpa":
        lm.set_attn_implementation(attn)
    return lm


def random_llava(cfg: ModelConfig, lm_config, tokenizer=None, device: str | torch.device = "cpu",
                 attn: str = "sdpa") -> LlavaLite:
    """A LlavaLite of random weights in cfg.dtype (the projector in fp32): cfg.vision names the tower's
    shape (an open_clip name, "tiny" or a local-dir config; cfg.vision.pretrained must be None),
    lm_config the LM's. tokenizer None: token ids only (the image token is the last id)."""
    meta = torch.device(device).type == "meta"
    lm = random_lm(lm_config, DTYPES[cfg.dtype], device, attn)
    model = assemble(cfg, tokenizer or IdsOnly(lm_config.vocab_size - 1), lm, meta=meta)
    if not meta:
        model.vision.to(device)
        model.projector.to(device)
    return model
