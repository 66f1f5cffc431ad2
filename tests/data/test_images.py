"""Opening images as RGB: every Pillow mode, transparency, 16-bit grey, and every failure a DataError
naming the record; LLaVA's pad-to-square."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_lite.data.conversation import DataError
from llava_lite.data.images import expand_to_square, load_image

# ---------------------------------------------------------------- load_image


def _grey16() -> Image.Image:
    return Image.fromarray(np.full((5, 7), 32768, dtype=np.uint16))


def _palette(transparent: bool) -> Image.Image:
    img = Image.new("RGB", (7, 5), (200, 0, 0)).convert("P")
    if transparent:
        img.info["transparency"] = 0
    return img


IMAGE_CASES = {
    "P.png": lambda: _palette(False),
    "P-transparent.png": lambda: _palette(True),
    "P-transparent.gif": lambda: _palette(True),
    "RGBA.png": lambda: Image.new("RGBA", (7, 5), (255, 0, 0, 0)),
    "LA.png": lambda: Image.new("LA", (7, 5), (0, 0)),
    "L.jpg": lambda: Image.new("L", (7, 5), 90),
    "I16.png": _grey16,
    "I16.tiff": _grey16,
    "1.png": lambda: Image.new("1", (7, 5), 1),
    "1.tiff": lambda: Image.new("1", (7, 5), 1),
    "CMYK.jpg": lambda: Image.new("CMYK", (7, 5), (0, 255, 255, 0)),
    "CMYK.tiff": lambda: Image.new("CMYK", (7, 5), (0, 255, 255, 0)),
}


@pytest.mark.parametrize("name", sorted(IMAGE_CASES))
def test_load_image_converts_to_rgb(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    IMAGE_CASES[name]().save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (7, 5)


def test_load_image_colours(tmp_path: Path) -> None:
    # Transparent pixels become white, not black; 16-bit grey is scaled, not clipped to white.
    Image.new("RGBA", (2, 2), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)
    _grey16().save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").getpixel((0, 0)) == (128, 128, 128)
    assert load_image(Image.new("CMYK", (1, 1), (0, 255, 255, 0))).getpixel((0, 0)) == (255, 0, 0)


def test_load_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"rec\.json:4.*not found.*nope\.jpg"):
        load_image(tmp_path / "nope.jpg", where="rec.json:4")


def test_load_image_non_image_bytes(tmp_path: Path) -> None:
    path = tmp_path / "noise.jpg"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    with pytest.raises(DataError, match=r"rec\.json:4.*noise\.jpg"):
        load_image(path, where="rec.json:4")


def test_load_image_truncated_png(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"rec\.json:4.*cut\.png"):
        load_image(path, where="rec.json:4")


@pytest.mark.parametrize("limit", [60, 30])  # over the limit: PIL warns; over twice the limit: PIL raises
def test_load_image_rejects_decompression_bomb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    Image.new("RGB", (10, 8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match=r"big\.png.*decompression bomb"):
        load_image(tmp_path / "big.png")


# ---------------------------------------------------------------- expand_to_square


@pytest.mark.parametrize("size, offset", [((6, 2), (0, 2)), ((2, 6), (2, 0))])
def test_expand_to_square_centres_image(size: tuple[int, int], offset: tuple[int, int]) -> None:
    fill = (122, 116, 104)
    out = expand_to_square(Image.new("RGB", size, (255, 0, 0)), fill)
    assert out.size == (6, 6)
    assert out.getpixel((0, 0)) == fill and out.getpixel((5, 5)) == fill
    assert out.getpixel(offset) == (255, 0, 0)
    assert out.getpixel((offset[0] + size[0] - 1, offset[1] + size[1] - 1)) == (255, 0, 0)
    assert np.asarray(out).reshape(-1, 3).tolist().count([255, 0, 0]) == size[0] * size[1]


def test_expand_to_square_keeps_square() -> None:
    img = Image.new("RGB", (4, 4))
    assert expand_to_square(img, (0, 0, 0)) is img
