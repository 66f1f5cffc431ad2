"""Preference pairs: one record -> one Conversation whose last answer is the chosen one and whose
`rejected` holds the dispreferred answer (format "pairs", read by readers.py like every format).

Two spellings are read (each may be text-only):

    LLaVA-NeXT DPO  {"id", "image": "a.jpg" | [...], "prompt": "<image>\\nWhat is ...?",
                     "chosen": "...", "rejected": "..."}
    TRL             {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", ...}]}],
                     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [...],
                     "images": ["a.jpg"]}

A string prompt with images but no `<image>` gets one placeholder per image in front of it (as
LLaVA-NeXT's DPO code does). TRL's bare `{"type": "image"}` parts take the record's `images` in
order; `image_url` and `{"type": "image", "image": ...}` parts name their own. Image paths go through
the same confinement as every other format.
"""
from __future__ import annotations

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.openai_format import openai_content, openai_turns

PAIR_KEYS = ("prompt", "chosen", "rejected")


def _image_list(rec: dict) -> list:
    value = rec.get("images", rec.get("image"))
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _answer(rec: dict, key: str, r) -> str:
    value = rec.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        turn = value[0]
        if turn.get("role") != "assistant":
            raise r.fail(f"{key}[0].role", f"must be 'assistant', got {turn.get('role')!r}", "not a pair")
        images: list = []
        text = openai_content(turn.get("content"), f"{key}[0].content", r, images)
        if images:
            raise r.fail(f"{key}[0].content", "holds an image; answers are text", "placeholder inside answer")
        return text
    raise r.fail(key, "must be a string or a list of one assistant message", "not a pair")


def _fill_bare_images(turns: list, refs: list, r) -> None:
    """TRL's {"type": "image"} parts carry no reference: give each the next of the record's images."""
    pending = list(refs)
    for i, turn in enumerate(turns):
        parts = turn.get("content") if isinstance(turn, dict) else None
        if not isinstance(parts, list):
            continue
        for j, part in enumerate(parts):
            if isinstance(part, dict) and part.get("type") == "image" and part.get("image") is None:
                if not pending:
                    raise r.fail(f"prompt[{i}].content[{j}]", "is an image part but field 'images' has no image left",
                                 "placeholder count mismatch")
                part["image"] = pending.pop(0)
    if pending and len(pending) != len(refs):
        raise r.fail("images", f"has {len(pending)} image(s) no image part takes", "placeholder count mismatch")


def _prompt(rec: dict, r) -> tuple[list[Message], list]:
    prompt, refs = rec.get("prompt"), _image_list(rec)
    if isinstance(prompt, str):
        images = [r.image(ref, "image") for ref in refs]
        if images and IMAGE_TOKEN not in prompt:
            prompt = "\n".join([IMAGE_TOKEN] * len(images) + [prompt])
        return [Message("user", prompt)], images
    if not isinstance(prompt, list) or not prompt:
        raise r.fail("prompt", "must be a string or a non-empty list of {role, content} messages", "not a pair")
    _fill_bare_images(prompt, refs, r)
    images: list = []
    messages = openai_turns(prompt, "prompt", r, images)
    if refs and not images:  # TRL records whose text has no image part: the images go first
        images = [r.image(ref, "images") for ref in refs]
        first = next(i for i, m in enumerate(messages) if m.role == "user")
        messages[first] = Message("user", "\n".join([IMAGE_TOKEN] * len(images) + [messages[first].content]))
    return messages, images


def parse_pair(rec: dict, r) -> Conversation:
    """One pair record -> Conversation(prompt + chosen, rejected=...). `r` is the reader's record
    context (readers._Record); OpenAI-style messages and content parts are read as the OpenAI format's."""
    missing = [k for k in PAIR_KEYS if k not in rec]
    if missing:
        raise r.fail(missing[0], "is missing (a preference pair needs 'prompt', 'chosen' and 'rejected')",
                     "not a pair")
    messages, images = _prompt(rec, r)
    if messages[-1].role != "user":
        raise r.fail("prompt", "must end with a user message (the question both answers reply to)", "not a pair")
    chosen = _answer(rec, "chosen", r)
    messages.append(r.answer("assistant", chosen, "chosen"))
    rejected = _answer(rec, "rejected", r)
    r.answer("assistant", rejected, "rejected")
    return Conversation(messages, images, rejected=rejected)
