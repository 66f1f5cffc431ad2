"""A tiny SigLIP-style tower for tests: a timm ViT with no CLS token and an attention-pool (MAP) head, built
through open_clip's timm backend from a local-dir config, exactly as open_clip builds `ViT-B-16-SigLIP`
(`timm_model_name`, `timm_pool: map`, `timm_proj: none`), only small. Nothing is downloaded."""
from __future__ import annotations

import json
from pathlib import Path

NAME = "llava_lite_tiny_siglip"


def register() -> str:
    """Register the tiny timm model once per process (timm resolves open_clip's `timm_model_name` by name)."""
    import timm
    from timm.models import register_model
    from timm.models.vision_transformer import VisionTransformer

    if timm.is_model(NAME):
        return NAME

    def llava_lite_tiny_siglip(pretrained: bool = False, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if k in ("num_classes", "global_pool", "drop_path_rate")}
        kwargs.setdefault("global_pool", "map")
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2, class_token=False,
                                 act_layer="gelu_tanh", **kwargs)

    register_model(llava_lite_tiny_siglip)
    return NAME


def tiny_siglip_dir(root: Path) -> str:
    """An open_clip local-dir config for the tiny SigLIP tower; returns the `local-dir:` reference."""
    register()
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": {"embed_dim": 64, "vision_cfg": {"image_size": 32, "timm_model_name": NAME,
                                                         "timm_model_pretrained": False, "timm_pool": "map",
                                                         "timm_proj": "none"},
                         "text_cfg": {"context_length": 2, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}},
           "preprocess_cfg": {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                              "interpolation": "bicubic", "resize_mode": "squash"}}
    (root / "open_clip_config.json").write_text(json.dumps(cfg))
    return f"local-dir:{root}"
