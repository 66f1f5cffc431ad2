"""AnyRes (LLaVA-NeXT): an image of any size becomes base-size tiles of its best-fitting resolution
plus the whole image downscaled, and the tiles' features are laid back out as the image's own grid.

    layout = Anyres(cfg.vision.anyres, base=336, grid=(24, 24))
    pixels = layout.tiles(image, preprocess)   # [1 + rows*cols, 3, 336, 336]: the whole image, then tiles
    n = layout.num_tokens((h, w))              # the image tokens it becomes (the data path renders this many)
    feats = layout.pack(x, (h, w), newline)    # [1 + rows*cols, P, D] projected features -> [n, D]

1. The best resolution among the pinpoints keeps the most of the image's pixels, then wastes the
   fewest (`best_resolution`).
2. The image is resized into it keeping its aspect ratio, centred on black, and cut into base x base
   tiles row by row; the whole image squashed to base x base comes first.
3. The tiles' feature grids become one (rows*gh) x (cols*gw) grid, the rows or columns that saw only
   padding are cut away, and a learned `image_newline` ends each row; the whole image's features
   come first.
Each step computes what transformers' LlavaNextImageProcessor (PIL) and LlavaNextForConditionalGeneration
do, so exported models agree with them (tests/interop/test_llava_next.py).
"""
from __future__ import annotations

import math

import torch
from PIL import Image

from llava_lite.config import AnyresConfig, ConfigError

RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}


def pinpoints(cfg: AnyresConfig, base: int) -> list[tuple[int, int]]:
    """The resolutions (height, width) an image may be tiled at: `grid_pinpoints`, or every rows x cols
    grid of base-size tiles with rows * cols <= max_tiles (1 x 1 included), rows first."""
    if cfg.grid_pinpoints:
        points = [tuple(p) for p in cfg.grid_pinpoints]
        bad = [p for p in points if len(p) != 2 or min(p) < base or p[0] % base or p[1] % base]
        if bad:
            raise ConfigError(f"model.vision.anyres.grid_pinpoints: {list(bad[0])} is not [height, width] in "
                              f"multiples of the tower's input size {base}")
        return points
    if cfg.max_tiles < 1:
        raise ConfigError(f"model.vision.anyres.max_tiles must be >= 1, got {cfg.max_tiles}")
    return [(r * base, c * base) for r in range(1, cfg.max_tiles + 1) for c in range(1, cfg.max_tiles + 1)
            if r * c <= cfg.max_tiles]


def best_resolution(size: tuple[int, int], points: list[tuple[int, int]]) -> tuple[int, int]:
    """The pinpoint that keeps most of an image of `size` (height, width) once fitted in, then wastes least."""
    h, w = size
    best, kept_most, wasted_least = points[0], 0, math.inf
    for ph, pw in points:
        scale = min(pw / w, ph / h)
        kept = min(int(w * scale) * int(h * scale), w * h)
        wasted = ph * pw - kept
        if kept > kept_most or (kept == kept_most and wasted < wasted_least):
            best, kept_most, wasted_least = (ph, pw), kept, wasted
    return best


def fitted_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image of `size` resized into `target`, keeping its aspect ratio."""
    (h, w), (th, tw) = size, target
    scale_w, scale_h = tw / w, th / h  # rounded as transformers rounds them: h * (tw / w) may not be h * tw / w
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), th), tw
    return th, min(math.ceil(w * scale_h), tw)


def unpadded(size: tuple[int, int], grid: tuple[int, int]) -> tuple[slice, slice]:
    """The rows and columns of a feature `grid` (height, width) laid over a padded image of `size`
    that saw the image itself (LLaVA-NeXT's unpad_image)."""
    (h, w), (gh, gw) = size, grid
    if w / h > gw / gh:  # wider than the grid: padding above and below
        pad = (gh - int(round(h * (gw / w), 7))) // 2
        return slice(pad, gh - pad), slice(0, gw)
    pad = (gw - int(round(w * (gh / h), 7))) // 2
    return slice(0, gh), slice(pad, gw - pad)


class Anyres:
    def __init__(self, cfg: AnyresConfig, base: int, grid: tuple[int, int], interpolation: str = "bicubic"):
        """base: the tower's input size (px); grid: its feature grid per tile (rows, columns)."""
        self.base, self.grid = base, tuple(grid)
        self.pinpoints = pinpoints(cfg, base)
        self.resample = RESAMPLE.get(interpolation, Image.Resampling.BICUBIC)

    def tile_grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(rows, columns) of tiles for an image of `size` (height, width)."""
        ph, pw = best_resolution(size, self.pinpoints)
        return ph // self.base, pw // self.base

    def num_tiles(self, size: tuple[int, int]) -> int:
        rows, cols = self.tile_grid(size)
        return 1 + rows * cols

    def num_tokens(self, size: tuple[int, int]) -> int:
        """Image tokens for an image of `size`: the whole image's grid, then the unpadded tile grid with
        one newline per row."""
        (rows, cols), (gh, gw) = self.tile_grid(size), self.grid
        r, c = unpadded(size, (rows * gh, cols * gw))
        return gh * gw + (r.stop - r.start) * (c.stop - c.start + 1)

    def max_tokens(self) -> int:
        """The most tokens any image can take (the per-image budget the pinpoints set)."""
        gh, gw = self.grid
        return gh * gw + max(ph // self.base * gh * (pw // self.base * gw + 1) for ph, pw in self.pinpoints)

    def tiles(self, image: Image.Image, preprocess) -> torch.Tensor:
        """PIL RGB image -> [1 + rows*cols, 3, base, base]: the whole image squashed to base x base, then
        the tiles of its padded best-resolution canvas, row by row, each through `preprocess`."""
        b = self.base
        th, tw = best_resolution((image.height, image.width), self.pinpoints)
        nh, nw = fitted_size((image.height, image.width), (th, tw))
        canvas = Image.new("RGB", (tw, th), (0, 0, 0))
        canvas.paste(image.resize((nw, nh), self.resample), ((tw - nw) // 2, (th - nh) // 2))
        parts = [image.resize((b, b), self.resample)]
        parts += [canvas.crop((x, y, x + b, y + b)) for y in range(0, th, b) for x in range(0, tw, b)]
        return torch.stack([preprocess(p) for p in parts])

    def pack(self, feats: torch.Tensor, size: tuple[int, int], newline: torch.Tensor) -> torch.Tensor:
        """[1 + rows*cols, gh*gw, D] features of one image's tiles -> [num_tokens(size), D]."""
        (rows, cols), (gh, gw) = self.tile_grid(size), self.grid
        d = feats.shape[-1]
        grid = feats[1:].view(rows, cols, gh, gw, d).permute(4, 0, 2, 1, 3).reshape(d, rows * gh, cols * gw)
        r, c = unpadded(size, (rows * gh, cols * gw))
        grid = grid[:, r, c]
        grid = torch.cat([grid, newline.to(grid.dtype)[:, None, None].expand(d, grid.shape[1], 1)], dim=2)
        return torch.cat([feats[0], grid.flatten(1).T])
