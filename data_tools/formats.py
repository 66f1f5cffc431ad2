"""Writers: Conversation -> LLaVA JSON, ShareGPT, Alpaca, OpenAI messages, preference-pair or text records.

The readers are `llava_lite.data`; these writers are their inverse, so read -> write -> read
gives back the same messages and images. Image paths are written relative to `image_folder`
when they lie under it (LLaVA's convention); decoded PIL images become PNG data URLs.
"""
from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from llava_lite.config import ConfigError
from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, DataError, ImageRef

FORMATS = ("llava", "sharegpt", "alpaca", "openai", "pairs", "text")
_FROM = {"user": "human", "assistant": "gpt", "system": "system"}


def image_ref(ref: ImageRef, image_folder: str | os.PathLike | None = None) -> str:
    """A path (relative to image_folder when under it) or a PNG data URL for an in-memory image."""
    if isinstance(ref, Image.Image):
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    if image_folder is not None:
        rel = os.path.relpath(os.path.abspath(ref), os.path.abspath(image_folder))
        if not rel.startswith(".."):
            return rel
    return str(ref)


def _images(conv: Conversation, folder: str | os.PathLike | None) -> list[str]:
    return [image_ref(r, folder) for r in conv.images]


def to_llava(conv: Conversation, image_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": conv.id} if conv.id else {}
    images = _images(conv, image_folder)
    if images:
        rec["image"] = images[0] if len(images) == 1 else images
    rec["conversations"] = [{"from": _FROM[m.role], "value": m.content} for m in conv.messages]
    return rec


def to_sharegpt(conv: Conversation, image_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": conv.id} if conv.id else {}
    body = conv.messages
    if body and body[0].role == "system":
        rec["system"], body = body[0].content, body[1:]
    rec["conversations"] = [{"from": _FROM[m.role], "value": m.content} for m in body]
    if conv.images:
        rec["images"] = _images(conv, image_folder)
    return rec


def to_alpaca(conv: Conversation, image_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """Alpaca holds exactly one text exchange; anything more cannot be written without loss."""
    roles = [m.role for m in conv.messages]
    if roles != ["user", "assistant"] or conv.images:
        raise DataError(f"{conv.where}: alpaca holds one user/assistant exchange without images or system prompt; "
                        f"this record has roles {roles} and {len(conv.images)} image(s)")
    rec: dict[str, Any] = {"id": conv.id} if conv.id else {}
    return {**rec, "instruction": conv.messages[0].content, "input": "", "output": conv.messages[1].content}


def _parts(text: str, images: list[str]) -> str | list[dict[str, Any]]:
    """Text with placeholders -> OpenAI content parts, the image_url part where each placeholder was."""
    if IMAGE_TOKEN not in text:
        return text
    parts: list[dict[str, Any]] = []
    pieces = text.split(IMAGE_TOKEN)
    for i, piece in enumerate(pieces):
        # The reader joins parts with "\n": drop the newline that joining will put back.
        piece = piece[1:] if i > 0 and piece.startswith("\n") else piece
        piece = piece[:-1] if i < len(pieces) - 1 and piece.endswith("\n") else piece
        if piece:
            parts.append({"type": "text", "text": piece})
        if i < len(pieces) - 1:
            parts.append({"type": "image_url", "image_url": {"url": images.pop(0)}})
    return parts


def to_openai(conv: Conversation, image_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    images = _images(conv, image_folder)
    rec: dict[str, Any] = {"id": conv.id} if conv.id else {}
    rec["messages"] = [{"role": m.role, "content": _parts(m.content, images)} for m in conv.messages]
    return rec


def to_pairs(conv: Conversation, image_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """A preference pair: LLaVA-NeXT's {image, prompt, chosen, rejected} when the prompt is one user
    turn, TRL's message lists (OpenAI content parts) otherwise."""
    if conv.rejected is None:
        raise DataError(f"{conv.where}: not a preference pair (no rejected answer)")
    rec: dict[str, Any] = {"id": conv.id} if conv.id else {}
    images, prompt = _images(conv, image_folder), conv.messages[:-1]
    chosen = conv.messages[-1].content
    if len(prompt) == 1:
        if images:
            rec["image"] = images[0] if len(images) == 1 else images
        return {**rec, "prompt": prompt[0].content, "chosen": chosen, "rejected": conv.rejected}
    return {**rec, "prompt": [{"role": m.role, "content": _parts(m.content, images)} for m in prompt],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": conv.rejected}]}


def to_text(conv: Conversation, image_folder: str | os.PathLike | None = None) -> dict[str, Any]:
    """A text document (read from format "text", trained plain); no conversation is one."""
    if conv.mode != "plain":
        raise DataError(f"{conv.where}: format 'text' holds plain documents only; this record is a conversation")
    rec: dict[str, Any] = {"id": conv.id} if conv.id else {}
    return {**rec, "text": conv.messages[-1].content}


WRITERS: dict[str, Callable[[Conversation, Any], dict[str, Any]]] = {
    "llava": to_llava, "sharegpt": to_sharegpt, "alpaca": to_alpaca, "openai": to_openai, "pairs": to_pairs,
    "text": to_text,
}


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    """A `.jsonl` path gets one record per line, anything else one JSON list."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    else:
        path.write_text(json.dumps(records, indent=1, ensure_ascii=False))


def write_conversations(
    convs: list[Conversation], path: Path, fmt: str = "llava", image_folder: str | os.PathLike | None = None
) -> list[tuple[str, str]]:
    """Write every conversation the format can hold; return (where, reason) for those it cannot."""
    if fmt not in WRITERS:
        raise ConfigError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    records, skipped = [], []
    for conv in convs:
        try:
            if conv.mode == "plain" and fmt != "text":  # as a conversation it would train as a chat answer
                raise DataError(f"{conv.where}: a text document can only be written as format 'text'")
            records.append(WRITERS[fmt](conv, image_folder))
        except DataError as e:
            skipped.append((conv.where, str(e)))
    write_records(records, path)
    return skipped
