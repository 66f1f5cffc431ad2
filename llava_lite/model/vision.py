"""The frozen vision tower (open_clip: its own CLIP ViTs, and timm-backed ones such as SigLIP / SigLIP2;
or `hf:` a transformers CLIPVisionModel / SiglipVisionModel, hf_tower.py) and its image preprocessing.
Features come from one block (`vision.layer`) through `forward_intermediates`, so a tower's pooling
head (SigLIP's attention pool) never runs.

The tower is never trained: parameters have requires_grad=False, the module stays in eval mode
whatever `.train()` is called on its parent, and features are computed under no_grad.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import open_clip
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from llava_lite.config import AnyresConfig, ConfigError, VisionConfig
from llava_lite.model.anyres import Anyres
from llava_lite.model.hf_tower import PREFIX as HF_PREFIX
from llava_lite.model.hf_tower import HFTower

TINY_DIR = Path(__file__).parents[1] / "assets" / "tiny_clip"  # open_clip local-dir layout, no weights


def _is_local_file(ref: str | None) -> bool:
    return bool(ref) and Path(ref).is_file()


class VisionTower(nn.Module):
    def __init__(self, cfg: VisionConfig, device: str | torch.device = "cpu"):
        """device "meta": shapes only (cfg.pretrained must then be None)."""
        super().__init__()
        self.cfg = cfg
        if cfg.model.startswith(HF_PREFIX):  # a transformers vision model (hf_tower.py)
            self.visual = HFTower(cfg.model, device)
            self._text_state, self._clip_config = {}, None
            self.preprocess = open_clip.image_transform(**_transform_kwargs(self.visual.preprocess_cfg))
        else:
            if cfg.model == "tiny":  # a small random ViT shipped as a config, for tests and smoke runs
                clip, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{TINY_DIR}", device=device)
            else:
                pretrained = None if cfg.model.startswith("local-dir:") else cfg.pretrained
                self._check_quickgelu()
                clip, _, preprocess = open_clip.create_model_and_transforms(cfg.model, pretrained=pretrained,
                                                                            device=device)
            self.visual = clip.visual  # only the image side runs; the text side is kept off-module for saving
            self._text_state = {k: v for k, v in clip.state_dict().items() if not k.startswith("visual.")}
            self.preprocess = preprocess
            self._clip_config = self._model_config(clip)
        pp = self.visual.preprocess_cfg if hasattr(self.visual, "preprocess_cfg") else {}
        self.mean = tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.visual.requires_grad_(False)
        self.visual.eval()
        self._check_pixel_shuffle()
        self.set_anyres(cfg.anyres)

    def _check_quickgelu(self) -> None:
        # OpenAI weights were trained with QuickGELU; open_clip only warns on a mismatch.
        tag = (self.cfg.pretrained or "").lower()
        if tag == "openai" and "quickgelu" not in self.cfg.model.lower():
            raise ConfigError(
                f"model.vision.model={self.cfg.model!r} with pretrained='openai' uses GELU but the OpenAI weights "
                f"need QuickGELU: use {self.cfg.model}-quickgelu"
            )

    def _model_config(self, clip: nn.Module) -> dict | None:
        if self.cfg.model == "tiny":
            return json.loads((TINY_DIR / "open_clip_config.json").read_text())
        if self.cfg.model.startswith("local-dir:"):
            return json.loads((Path(self.cfg.model[len("local-dir:"):]) / "open_clip_config.json").read_text())
        cfg = open_clip.get_model_config(self.cfg.model)
        return {"model_cfg": cfg} if cfg else None

    def train(self, mode: bool = True) -> VisionTower:
        super().train(mode)
        self.visual.eval()  # frozen: dropout / norm statistics never switch to training behaviour
        return self

    @property
    def trunk(self) -> nn.Module | None:
        """The timm ViT of a timm-backed open_clip tower (SigLIP, SigLIP2); None for open_clip's own ViTs."""
        return getattr(self.visual, "trunk", None)

    @property
    def is_hf(self) -> bool:
        return isinstance(self.visual, HFTower)

    @property
    def width(self) -> int:
        if self.is_hf:
            base = self.visual.width
        else:
            base = self.trunk.embed_dim if self.trunk is not None else self.visual.transformer.width
        return base * self.cfg.pixel_shuffle**2

    @property
    def grid_size(self) -> tuple[int, int]:
        if self.trunk is not None:
            return tuple(self.trunk.patch_embed.grid_size)
        return tuple(self.visual.grid_size)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid_size
        r = self.cfg.pixel_shuffle
        return (gh // r) * (gw // r) + (1 if self.cfg.use_cls else 0)

    def _check_pixel_shuffle(self) -> None:
        r, (gh, gw) = self.cfg.pixel_shuffle, self.grid_size
        if r < 1 or gh % r or gw % r:
            raise ConfigError(f"model.vision.pixel_shuffle={r} must divide the {gh}x{gw} patch grid")
        if r > 1 and self.cfg.use_cls:
            raise ConfigError("model.vision.pixel_shuffle > 1 cannot be combined with model.vision.use_cls")
        trunk = self.trunk
        no_cls = self.is_hf and not self.visual.has_cls
        if self.cfg.use_cls and (no_cls or trunk is not None and (getattr(trunk, "cls_token", None) is None
                                                                   or getattr(trunk, "num_reg_tokens", 0))):
            raise ConfigError(f"model.vision.use_cls: the tower {self.cfg.model!r} has no single CLS token "
                              "(SigLIP pools with attention): set use_cls false")

    def set_anyres(self, anyres: AnyresConfig | None) -> None:
        """Tile images as `anyres` says from now on (None: one crop); `self.anyres` is the layout."""
        self.cfg.anyres, self.anyres = anyres, None
        if anyres is None:
            return
        if self.cfg.use_cls or self.cfg.pad_to_square:
            raise ConfigError("model.vision.anyres lays tiles out as a grid of patch tokens: it cannot keep the CLS "
                              "token (use_cls) and replaces pad_to_square; set both false")
        size = self.visual.image_size
        h, w = size if isinstance(size, (tuple, list)) else (size, size)
        if h != w:
            raise ConfigError(f"model.vision.anyres needs a square tower input, not {h}x{w}")
        r, (gh, gw) = self.cfg.pixel_shuffle, self.grid_size
        interpolation = getattr(self.visual, "preprocess_cfg", {}).get("interpolation", "bicubic")
        self.anyres = Anyres(anyres, h, (gh // r, gw // r), interpolation)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    def image_to_tensor(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> [3, H, W] with open_clip's own resize/crop/normalise."""
        if self.cfg.pad_to_square:
            from llava_lite.data.images import expand_to_square

            image = expand_to_square(image, tuple(int(m * 255) for m in self.mean))
        return self.preprocess(image)

    def image_to_pixels(self, image: Image.Image) -> torch.Tensor:
        """PIL RGB image -> [k, 3, H, W]: its one crop, or with AnyRes the whole image then its tiles."""
        if self.anyres is None:
            return self.image_to_tensor(image)[None]
        return self.anyres.tiles(image, self.preprocess)

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> patch features [N, P, width] from block `cfg.layer` (P includes CLS if use_cls)."""
        if pixel_values.shape[0] == 0:  # no image: no compute (a sharded engine still gathered this module)
            return torch.zeros(0, self.num_patches, self.width, dtype=self.dtype, device=pixel_values.device)
        out = self.visual.forward_intermediates(
            pixel_values.to(self.dtype),
            indices=[self.cfg.layer],
            output_fmt="NLC",
            intermediates_only=True,
            output_extra_tokens=self.cfg.use_cls,
            normalize_intermediates=self.cfg.normalize,
        )
        feats = out["image_intermediates"][0]  # [N, P, width]
        if self.cfg.pixel_shuffle > 1:
            feats = pixel_shuffle(feats, self.grid_size, self.cfg.pixel_shuffle)
        if self.cfg.use_cls:
            feats = torch.cat([out["image_intermediates_prefix"][0], feats], dim=1)
        return feats

    def save_local(self, out_dir: Path, state: dict | None = None) -> str:
        """Write the tower in open_clip's local-dir layout (an hf: tower: transformers' layout); returns the
        reference to put in the config. `state`: this module's state dict gathered elsewhere (sharded
        training); default: its own."""
        out_dir.mkdir(parents=True, exist_ok=True)
        if self.is_hf:
            own = self.state_dict() if state is None else state
            inner = {k[len("visual.model."):]: v.detach().contiguous().cpu() for k, v in own.items()
                     if k.startswith("visual.model.")}
            self.visual.save(out_dir, inner, self.cfg.model)
            return f"{HF_PREFIX}{out_dir}"
        if self.cfg.model.startswith("local-dir:"):
            src = Path(self.cfg.model[len("local-dir:"):])
            if src.resolve() != out_dir.resolve():
                shutil.copy(src / "open_clip_config.json", out_dir / "open_clip_config.json")
        else:
            (out_dir / "open_clip_config.json").write_text(json.dumps(self._clip_config, indent=2))
        own = self.state_dict() if state is None else state
        state = {k: v for k, v in own.items() if k.startswith("visual.")} | self._text_state
        state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(state, str(out_dir / "open_clip_model.safetensors"))
        return f"local-dir:{out_dir}"

    def needs_weights_saved(self) -> bool:
        """A hub tag can be reloaded by name; random or local towers travel inside the model directory."""
        tag = self.cfg.pretrained
        if self.cfg.model.startswith(HF_PREFIX):  # a local directory travels; a hub id is reloaded by name
            return Path(self.cfg.model[len(HF_PREFIX):]).expanduser().exists()
        if self.cfg.model == "tiny" or self.cfg.model.startswith("local-dir:"):
            return True
        return not tag or _is_local_file(tag)


def _transform_kwargs(pp: dict) -> dict:
    """open_clip image_transform arguments for an eval-time preprocess_cfg."""
    return dict(image_size=pp["image_size"], is_train=False, mean=pp["mean"], std=pp["std"],
                resize_mode=pp.get("resize_mode", "shortest"), interpolation=pp.get("interpolation", "bicubic"))


def pixel_shuffle(feats: torch.Tensor, grid: tuple[int, int], r: int) -> torch.Tensor:
    """[N, H*W, C] -> [N, (H/r)*(W/r), C*r*r]: each r x r block of neighbouring patches becomes one
    token carrying all their channels (Idefics3 / nanoVLM), so no information is averaged away."""
    n, _, c = feats.shape
    h, w = grid
    x = feats.reshape(n, h // r, r, w // r, r, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // r) * (w // r), r * r * c)
