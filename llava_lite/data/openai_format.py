"""The OpenAI chat format's parts: {role, content} turns whose content is a string or a list of text and image
parts. Read for the OpenAI format and for preference pairs' TRL-style prompts and answers (data/pairs.py); `r` is
the reader's record context (readers._Record: field errors, image resolution)."""
from __future__ import annotations

from typing import Any

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import ROLES, Conversation, ImageRef, Message


def openai_content(content: Any, field: str, r: Any, images: list[ImageRef]) -> str:
    """A string, or a list of text / image parts; each image part becomes a placeholder in place."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise r.fail(field, f"must be a string or a list of parts, got {type(content).__name__}")
    pieces = []
    for j, part in enumerate(content):
        pf = f"{field}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            pieces.append(r.text(part, "text", f"{pf}.text"))
        elif kind == "image_url":
            url = part.get("image_url")
            # {"url": ...} is the OpenAI spelling; a bare string is a common shorthand.
            if isinstance(url, dict):
                images.append(r.image(url.get("url"), f"{pf}.image_url.url"))
            else:
                images.append(r.image(url, f"{pf}.image_url"))
            pieces.append(IMAGE_TOKEN)
        elif kind == "image":
            images.append(r.image(part.get("image"), f"{pf}.image"))
            pieces.append(IMAGE_TOKEN)
        else:
            raise r.fail(f"{pf}.type", f"must be 'text', 'image_url' or 'image', got {kind!r}")
    return "\n".join(pieces)


def openai_turns(turns: list, key: str, r: Any, images: list[ImageRef]) -> list[Message]:
    """OpenAI-style {role, content} turns (field `key`) -> Messages; their image parts are appended to `images`.
    Shared by the OpenAI format and preference pairs' TRL-style prompts (data/pairs.py)."""
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        field = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise r.fail(field, f"must be an object, got {type(turn).__name__}")
        role = r.text(turn, "role", f"{field}.role")
        if role not in ROLES:
            raise r.fail(f"{field}.role", f"has unknown role {role!r} (expected one of {list(ROLES)})", "unknown role")
        content = openai_content(turn.get("content"), f"{field}.content", r, images)
        messages.append(r.answer(role, content, f"{field}.content"))
    return messages


def parse_openai(rec: dict, r: Any) -> Conversation:
    turns = rec.get("messages")
    if not isinstance(turns, list) or not turns:
        raise r.fail("messages", "must be a non-empty list of {role, content} messages", "no conversations")
    images: list[ImageRef] = []
    return Conversation(openai_turns(turns, "messages", r, images), images)
