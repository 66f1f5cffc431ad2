"""Server settings: who may call, and how much one request may ask of the model."""
from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    model_name: str | None = None  # id shown by /v1/models; default: the model directory's name
    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_body_bytes: int = 32 * MiB  # a whole request, base64 images included
    max_image_bytes: int = 10 * MiB  # one decoded image file
    max_image_pixels: int = 25_000_000  # width x height, checked before pixel data is decoded
    max_images: int = 8  # per request
    default_max_tokens: int = 512  # when the request sets no max_tokens (cut to what the context has left)
    max_queue: int = 64  # requests waiting for the model; more get 503
    allow_remote_images: tuple[str, ...] = ()  # hostnames whose http(s) image URLs may be fetched
    remote_timeout_s: float = 10.0
