"""Tiny random vision towers made by transformers itself (CLIPVisionModel, SiglipVisionModel) with their image
processors, saved as directories `model.vision.model: hf:<dir>` reads."""
from __future__ import annotations

from pathlib import Path

import torch

MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def clip_tower(out: Path, seed: int = 0) -> Path:
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8, hidden_act="quick_gelu")
    CLIPVisionModel(cfg).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=3,
                       image_mean=MEAN, image_std=STD).save_pretrained(out)
    return out


def siglip_tower(out: Path, seed: int = 0, head: bool = True) -> Path:
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                             image_size=32, patch_size=8, vision_use_head=head)
    SiglipVisionModel(cfg).save_pretrained(out)
    SiglipImageProcessor(size={"height": 32, "width": 32}, resample=3, image_mean=[0.5] * 3,
                         image_std=[0.5] * 3).save_pretrained(out)
    return out
