"""Image URLs from requests -> PIL images, within the server's limits.

`data:` URLs (base64 PNG, JPEG or WebP) are always accepted. http(s) URLs are fetched only from
hosts in `Settings.allow_remote_images`, without following redirects. Nothing else is read: a
local path or `file:` URL is refused, never opened. Decoding is the data path's own
(`llava_lite.data.images`): width x height is checked from the header before any pixel data is
decoded, so a small file that would decode to a huge bitmap (a decompression bomb) is rejected
without allocating it. Here its errors become API errors.
"""
from __future__ import annotations

import io
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from PIL import Image

from llava_lite.data.conversation import DataError
from llava_lite.data.images import ImageTooLarge, data_url_bytes, open_image
from llava_lite.serve.errors import APIError
from llava_lite.serve.settings import Settings

FORMATS = ("PNG", "JPEG", "WEBP")


def load_url(url: str, settings: Settings, param: str) -> Image.Image:
    """Decode a data: URL or fetch an allowed http(s) URL; any refusal is an APIError naming `param`."""
    if url.startswith("data:"):
        try:
            data = data_url_bytes(url, max_bytes=settings.max_image_bytes)
        except ImageTooLarge as e:
            raise APIError(413, str(e), param, "image_too_large") from None
        except DataError as e:
            raise APIError(400, f"image {e}", param, "invalid_image_url") from None
        return open_bytes(data, settings, param)
    scheme, host = urlsplit(url).scheme, urlsplit(url).hostname
    if scheme in ("http", "https") and host in settings.allow_remote_images:
        return open_bytes(_fetch(url, settings, param), settings, param)
    if scheme in ("http", "https") and settings.allow_remote_images:
        raise APIError(400, f"image host {host!r} is not allowed (allowed: {', '.join(settings.allow_remote_images)})",
                       param, "image_url_not_allowed")
    raise APIError(400, "only base64 data: image URLs are accepted (data:image/png;base64,...)",
                   param, "image_url_not_allowed")


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
    return data


def open_bytes(data: bytes, settings: Settings, param: str) -> Image.Image:
    """Bytes -> decoded PIL image, after checking size, format and pixel count."""
    if len(data) > settings.max_image_bytes:
        raise APIError(413, f"image is {len(data)} bytes, over the limit of {settings.max_image_bytes}", param,
                       "image_too_large")
    try:
        return open_image(io.BytesIO(data), "", "in the request", formats=FORMATS, max_pixels=settings.max_image_pixels)
    except ImageTooLarge as e:
        raise APIError(413, str(e), param, "image_too_large") from None
    except DataError as e:
        raise APIError(400, str(e), param, "invalid_image") from None
