"""Image URLs from requests -> PIL images, within the server's limits.

`data:` URLs (base64 PNG, JPEG or WebP) are always accepted. http(s) URLs are fetched only from
hosts in `Settings.allow_remote_images`, without following redirects. Nothing else is read: a
local path or `file:` URL is refused, never opened. Width x height is checked from the header,
before any pixel data is decoded, so a small file that would decode to a huge bitmap (a
decompression bomb) is rejected without allocating it.
"""
from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.request
import warnings
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

from .errors import APIError
from .settings import Settings

FORMATS = ("PNG", "JPEG", "WEBP")


def load_url(url: str, settings: Settings, param: str) -> Image.Image:
    """Decode a data: URL or fetch an allowed http(s) URL; any refusal is an APIError naming `param`."""
    if url.startswith("data:"):
        return open_image(_data_url_bytes(url, settings, param), settings, param)
    scheme, host = urlsplit(url).scheme, urlsplit(url).hostname
    if scheme in ("http", "https") and host in settings.allow_remote_images:
        return open_image(_fetch(url, settings, param), settings, param)
    if scheme in ("http", "https") and settings.allow_remote_images:
        raise APIError(400, f"image host {host!r} is not allowed (allowed: {', '.join(settings.allow_remote_images)})",
                       param, "image_url_not_allowed")
    raise APIError(400, "only base64 data: image URLs are accepted (data:image/png;base64,...)",
                   param, "image_url_not_allowed")


def _data_url_bytes(url: str, settings: Settings, param: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise APIError(400, "image data: URL must be base64 (data:image/png;base64,...)", param, "invalid_image_url")
    if len(payload) * 3 // 4 > settings.max_image_bytes + 2:  # reject before decoding
        raise _too_big(len(payload) * 3 // 4, settings, param)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"image data: URL is not valid base64: {e}", param, "invalid_image_url") from None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs) -> None:
        return None  # a redirect could lead off the allow-list


def _fetch(url: str, settings: Settings, param: str) -> bytes:
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(url, timeout=settings.remote_timeout_s) as resp:
            data = resp.read(settings.max_image_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise APIError(400, f"could not fetch image URL: {e}", param, "image_fetch_failed") from None
    if len(data) > settings.max_image_bytes:
        raise _too_big(len(data), settings, param)
    return data


def _too_big(size: int, settings: Settings, param: str) -> APIError:
    return APIError(413, f"image is {size} bytes, over the limit of {settings.max_image_bytes}", param, "image_too_large")


def open_image(data: bytes, settings: Settings, param: str) -> Image.Image:
    """Bytes -> decoded PIL image, after checking size, format and pixel count."""
    if len(data) > settings.max_image_bytes:
        raise _too_big(len(data), settings, param)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
            pixels = img.width * img.height
            if pixels > settings.max_image_pixels:
                raise APIError(413, f"image is {img.width}x{img.height} = {pixels} pixels, over the limit of "
                               f"{settings.max_image_pixels}", param, "image_too_large")
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise APIError(413, f"image is too large (decompression bomb): {e}", param, "image_too_large") from None
    except UnidentifiedImageError:
        raise APIError(400, "image is not a PNG, JPEG or WebP file", param, "invalid_image") from None
    except (OSError, SyntaxError, EOFError, ValueError) as e:
        raise APIError(400, f"cannot decode image: {e}", param, "invalid_image") from None
    return img
