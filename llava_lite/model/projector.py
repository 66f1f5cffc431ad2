"""Projectors map CLIP patch features [N, P, vision_width] to LM embeddings [N, P, hidden]."""
from __future__ import annotations

import re

import torch
from torch import nn

from llava_lite.config import ConfigError


def build_projector(name: str, vision_width: int, hidden: int) -> nn.Module:
    """`linear` (LLaVA-1), `mlp2x_gelu` (LLaVA-1.5), or any `mlp{N}x_gelu` (N linear layers, GELU between)."""
    if name == "linear":
        return nn.Linear(vision_width, hidden)
    match = re.fullmatch(r"mlp(\d+)x_gelu", name)
    if match is None or int(match.group(1)) < 1:
        raise ConfigError(f"model.projector={name!r}: unknown projector; use 'linear', 'mlp2x_gelu' or 'mlpNx_gelu'")
    layers: list[nn.Module] = [nn.Linear(vision_width, hidden)]
    for _ in range(int(match.group(1)) - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


class AnyresProjector(nn.Module):
    """The projector of an AnyRes model (model/anyres.py): `proj` maps every tile's features, then each
    image's tiles are packed into its own grid, each row ended by the learned `image_newline`
    (LLaVA-NeXT). Packing happens inside this forward, so sharded engines (ZeRO-3, FSDP) have the
    newline gathered when it is read."""

    def __init__(self, proj: nn.Module, hidden: int, layout):
        super().__init__()
        self.proj = proj
        self.image_newline = nn.Parameter(torch.randn(hidden) / hidden**0.5)  # LLaVA-NeXT's initialisation
        self.layout = layout

    def forward(self, feats: torch.Tensor, image_sizes: torch.Tensor | None) -> torch.Tensor:
        """[N tiles, P, vision_width] and [M, 2] image sizes (height, width) -> [S, hidden], the M images'
        tokens one after another."""
        x = self.proj(feats)
        if not feats.shape[0]:  # no image: the newline takes part with a zero gradient (DDP, run_vision_every_step)
            return x.flatten(0, 1) + self.image_newline.sum() * 0
        out, start = [], 0
        for size in image_sizes.tolist():
            n = self.layout.num_tiles(size)
            out.append(self.layout.pack(x[start:start + n], size, self.image_newline))
            start += n
        if start != x.shape[0]:
            raise ValueError(f"{x.shape[0]} tiles, but the {len(out)} image sizes make {start}")
        return torch.cat(out)
