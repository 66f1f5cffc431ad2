"""Images into the LM's input: tower -> projector (-> AnyRes packing) -> each image's tokens, in the
order of the `<image>` slots. LlavaLite.embed and the training reference (train/reference.py, with
its own copy of the starting projector) both go through here."""
from __future__ import annotations

import torch
from torch import nn


def image_features(vision, projector: nn.Module, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None,
                   image_rows: torch.Tensor | None = None) -> torch.Tensor:
    """[N, 3, H, W] crops (AnyRes: each image's tiles, [M, 2] `image_sizes`) -> [S, hidden]: the images'
    tokens one after another. image_rows ([K] indices into the images): the image each slot group
    takes, in order, so one encoded image can fill several rows (a preference pair's two answers)."""
    feats = vision(pixel_values).to(next(projector.parameters()).dtype)  # [N, P, width]
    if vision.anyres is None:
        x = projector(feats)  # [N, P, hidden]
        return (x if image_rows is None else x[image_rows]).flatten(0, 1)
    x = projector(feats, image_sizes)  # [S, hidden]
    if image_rows is None:
        return x
    chunks = x.split([vision.anyres.num_tokens(size) for size in image_sizes.tolist()])
    return torch.cat([chunks[i] for i in image_rows.tolist()])


def fill_slots(embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, feats: torch.Tensor) -> torch.Tensor:
    """[B, T, hidden] embeddings with the [S, hidden] image features at the S `<image>` slots, in order."""
    slots = input_ids == image_token_id
    n_slots = int(slots.sum())
    if n_slots != feats.shape[0]:
        raise ValueError(f"{feats.shape[0]} image features do not fill {n_slots} placeholder tokens")
    return embeds.masked_scatter(slots.unsqueeze(-1), feats.to(embeds.dtype))
