"""A transformers vision model (CLIPVisionModel, SiglipVisionModel, or the vision half of CLIPModel /
SiglipModel) behind the interface VisionTower reads from open_clip towers: `forward_intermediates`,
`image_size`, `preprocess_cfg`, plus `width` and `grid_size`.

    model.vision.model: hf:/path/to/dir   (or hf:<hub id> where the hub is reachable or cached)

Imported llava-hf models keep their tower this way (SigLIP ones have no open_clip form). Features are the
encoder's hidden states: index 0 is the embeddings (after CLIP's pre-LayerNorm), i + 1 block i's output, so
open_clip block indices map as in interop/hf_clip.py. The pooling head (CLIP's post-LayerNorm on CLS,
SigLIP's attention pool) never runs. Preprocessing comes from the directory's image processor settings.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llava_lite.config import ConfigError

PREFIX = "hf:"
RESAMPLE = {"bicubic": 3, "bilinear": 2}  # open_clip interpolation -> PILImageResampling
KINDS = {"clip": "clip", "clip_vision_model": "clip", "siglip": "siglip", "siglip_vision_model": "siglip"}


def preprocess_from_hf(ip: dict) -> dict:
    """An image processor's settings -> open_clip preprocess_cfg (the inverse of hf_clip.image_processor_kwargs)."""
    from llava_lite.errors import FormatError

    interp = {v: k for k, v in RESAMPLE.items()}.get(int(ip.get("resample", 3)))
    if interp is None or not ip.get("do_normalize", True) or abs(ip.get("rescale_factor", 1 / 255) - 1 / 255) > 1e-12:
        raise FormatError(f"image processor settings resample={ip.get('resample')} / rescale / normalize "
                          "are not open_clip's")
    size, crop = ip.get("size", {}), ip.get("crop_size") or {}
    cfg = {"mean": list(ip["image_mean"]), "std": list(ip["image_std"]), "interpolation": interp}
    if "shortest_edge" in size and ip.get("do_center_crop", True) and crop == {"height": size["shortest_edge"],
                                                                              "width": size["shortest_edge"]}:
        return cfg | {"image_size": size["shortest_edge"], "resize_mode": "shortest"}
    # (SigLIP's processor has no centre crop at all: a missing do_center_crop means none)
    if size.get("height") and size.get("height") == size.get("width") and not ip.get("do_center_crop", False):
        return cfg | {"image_size": size["height"], "resize_mode": "squash"}
    raise FormatError(f"image processor size={size} crop_size={crop}: open_clip resizes and crops to one size")


class HFTower(nn.Module):
    def __init__(self, ref: str, device: str | torch.device = "cpu"):
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        super().__init__()
        source = ref[len(PREFIX):]
        config = AutoConfig.from_pretrained(source)
        self.kind = KINDS.get(config.model_type)
        if self.kind is None:
            raise ConfigError(f"model.vision.model={ref!r}: a {config.model_type!r} model; hf: towers are "
                              "CLIPVisionModel, SiglipVisionModel, CLIPModel or SiglipModel directories")
        if device == "meta":
            with torch.device("meta"):
                model = AutoModel.from_config(config)
        else:
            model = AutoModel.from_pretrained(source, dtype=torch.float32).to(device)
        # CLIPVisionModel / SiglipVisionModel as they are; of a CLIPModel / SiglipModel, the vision half
        self.model = getattr(model, "vision_model", model)
        if getattr(self.model, "use_head", False):
            self.model.use_head = False  # SigLIP's attention pool: never run (its weights stay, and are saved)
        vc = self.model.config
        self.has_cls = self.kind == "clip"
        self.image_size = (vc.image_size, vc.image_size)
        self.width = vc.hidden_size
        self.grid_size = (vc.image_size // vc.patch_size,) * 2
        self.num_blocks = vc.num_hidden_layers
        self.preprocess_cfg = preprocess_from_hf(AutoImageProcessor.from_pretrained(source, backend="pil").to_dict())

    def forward_intermediates(self, x: torch.Tensor, indices: list[int], output_fmt: str = "NLC",
                              intermediates_only: bool = True, output_extra_tokens: bool = False,
                              normalize_intermediates: bool = False) -> dict:
        """open_clip's call, answered from the encoder's hidden states (block i -> hidden_states[i + 1])."""
        out = self.model(pixel_values=x, output_hidden_states=True)
        states = [out.hidden_states[i + 1 if i >= 0 else i] for i in indices]
        if normalize_intermediates:
            states = [self.model.post_layernorm(s) for s in states]
        skip = 1 if self.has_cls else 0
        result = {"image_intermediates": [s[:, skip:] for s in states]}
        if output_extra_tokens:
            result["image_intermediates_prefix"] = [s[:, :skip] for s in states]
        return result

    def save(self, out_dir: Path, state: dict[str, torch.Tensor], source: str) -> None:
        """The vision model (its weights from `state`, keys as in `self.model`) and the image processor settings,
        as a directory `hf:` reads back."""
        from transformers import AutoImageProcessor, AutoModel

        with torch.device("meta"):
            holder = AutoModel.from_config(self.model.config)  # CLIPVisionModel / SiglipVisionModel
        holder.load_state_dict(state, strict=True, assign=True)
        holder.save_pretrained(out_dir)
        AutoImageProcessor.from_pretrained(source[len(PREFIX):], backend="pil").save_pretrained(out_dir)
