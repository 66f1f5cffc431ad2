"""Projectors map CLIP patch features [N, P, vision_width] to LM embeddings [N, P, hidden]."""
from __future__ import annotations

import re

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
