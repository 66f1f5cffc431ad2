"""Opening images as RGB, with every failure turned into a DataError that names the record."""
from __future__ import annotations

import base64
import binascii
import io
import os
import warnings
from typing import IO, Union

from PIL import Image, UnidentifiedImageError

from llava_lite.data.conversation import DataError, ImageRef

# Modes that carry an alpha channel: composited onto white, as a viewer would show them.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# Errors Pillow raises for unreadable, corrupt or truncated files (SyntaxError: "broken PNG file").
_READ_ERRORS = (OSError, SyntaxError, EOFError, ValueError)


def _prefix(where: str) -> str:
    return f"{where}: " if where else ""


class ImageTooLarge(DataError):
    """An image over a size or pixel limit (possibly a decompression bomb)."""

    def __init__(self, message: str = "", reason: str = "image too large"):
        super().__init__(message, reason)


ESCAPES = "path escapes image folder"


def resolve_image(folder: str | os.PathLike, ref: str, allow_absolute: bool = False, where: str = "") -> str:
    """The path of image `ref` inside `folder`. Unless `allow_absolute`, an absolute `ref`, a `..`
    that leaves the folder, or a symlink that points outside it is a DataError (reason "path escapes
    image folder"): a data file is somebody else's, and must not make us read outside its images.
    Training, `data validate`, `data shards` and `eval --vqa` all resolve through here."""
    ref = os.fspath(ref)
    if allow_absolute:
        return os.path.join(os.fspath(folder), ref)
    if os.path.isabs(ref) or ref.startswith("~"):
        raise DataError(f"{_prefix(where)}image path {ref!r} is absolute; it must be relative to the image folder "
                        "(or set data.allow_absolute_image_paths=true)", ESCAPES)
    path = os.path.join(os.fspath(folder), ref)
    root = os.path.realpath(folder)
    real = os.path.realpath(path)
    if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
        raise DataError(f"{_prefix(where)}image path {ref!r} resolves to {real}, outside the image folder {root} "
                        "(or set data.allow_absolute_image_paths=true)", ESCAPES)
    return path


def open_image(fp: Union[str, IO[bytes]], where: str, name: str, *, formats: tuple[str, ...] | None = None,
               max_pixels: int | None = None, decode: bool = True) -> Image.Image:
    """Open and fully decode an image so that corrupt and truncated data fail here, not later.
    Width x height is checked from the header before any pixel is decoded: against `max_pixels`
    when given, and always against Pillow's decompression-bomb limit. decode=False: the header only."""
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a training set should refuse both.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=formats)  # reads the header only
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{_prefix(where)}image {name} is {img.width}x{img.height} = "
                                    f"{img.width * img.height} pixels, over the limit of {max_pixels}")
            if decode:
                img.load()
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{_prefix(where)}image file not found: {name}", "image file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(
            f"{_prefix(where)}image {name} is too large (over Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS} pixels, "
            f"a possible decompression bomb): {e}"
        ) from None
    except UnidentifiedImageError as e:
        if formats:
            raise DataError(f"{_prefix(where)}image {name} is not a {', '.join(formats)} file",
                            "unreadable image") from None
        raise DataError(f"{_prefix(where)}cannot read image {name}: {type(e).__name__}: {e}",
                        "unreadable image") from None
    except IsADirectoryError:
        raise DataError(f"{_prefix(where)}image path is a directory: {name}", "image file not found") from None
    except _READ_ERRORS as e:
        raise DataError(f"{_prefix(where)}cannot read image {name}: {type(e).__name__}: {e}",
                        "unreadable image") from None
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode == "I" or img.mode.startswith("I;16"):
        # Pillow clips 16-bit values to 255 when converting to L; scale the 0..65535 range down instead.
        img = img.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    return img.convert("RGB")


def load_image(ref: ImageRef | os.PathLike, where: str = "") -> Image.Image:
    """Open a path (or take a PIL image) and return it in RGB; any failure is a DataError naming `where`."""
    opened = not isinstance(ref, Image.Image)
    img = open_image(os.fspath(ref), where, os.fspath(ref)) if opened else ref
    try:
        rgb = to_rgb(img)
    except _READ_ERRORS as e:
        raise DataError(f"{_prefix(where)}cannot convert image (mode {img.mode}) to RGB: {e}",
                        "unreadable image") from None
    if opened and rgb is not img:
        img.close()  # multi-frame files (GIF, TIFF) keep their file open until closed
    return rgb


def image_size(ref: ImageRef | os.PathLike, where: str = "") -> tuple[int, int]:
    """(height, width) of an image from its header, no pixel decoded (AnyRes counts its tokens from it)."""
    if isinstance(ref, Image.Image):
        return ref.height, ref.width
    with open_image(os.fspath(ref), where, os.fspath(ref), decode=False) as img:
        return img.height, img.width


def data_url_bytes(url: str, where: str = "", max_bytes: int | None = None) -> bytes:
    """The payload of a base64 `data:image/...;base64,...` URL (checked against `max_bytes` before decoding)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise DataError(f"{_prefix(where)}only base64 data: URLs are supported (data:image/png;base64,...), "
                        f"got {url[:40]!r}...", "bad image reference")
    if max_bytes is not None and len(payload) * 3 // 4 > max_bytes + 2:
        raise ImageTooLarge(f"{_prefix(where)}image is {len(payload) * 3 // 4} bytes, over the limit of {max_bytes}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{_prefix(where)}data: URL is not valid base64: {e}", "bad image reference") from None


def decode_data_url(url: str, where: str = "") -> Image.Image:
    """Decode a base64 data: URL into a (decoded, not yet RGB) PIL image."""
    return open_image(io.BytesIO(data_url_bytes(url, where)), where, f"<{url.partition(',')[0]}>")


def expand_to_square(img: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """LLaVA's pad-to-square: centre the image on a square canvas of its longer side, filled with `fill`."""
    width, height = img.size
    if width == height:
        return img
    side = max(width, height)
    canvas = Image.new(img.mode, (side, side), fill)
    canvas.paste(img, ((side - width) // 2, (side - height) // 2))
    return canvas
