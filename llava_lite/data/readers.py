"""Read LLaVA, ShareGPT, Alpaca, OpenAI-chat, preference-pair and text-document files into Conversations.

Images are not opened here: a Conversation's `images` holds resolved paths (confined to the
image folder, see `images.resolve_image`), or PIL images for inline `data:` URLs. Every error
names the file, the record (index or line, and id) and the field, and carries a short `reason`;
collected, a bad record is a `Reject` (rejects.py), the row rejects.jsonl gets.
"""
from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Union, overload

from llava_lite.config import ConfigError
from llava_lite.data.conversation import Conversation, DataError, ImageRef, Message
from llava_lite.data.images import decode_data_url, resolve_image
from llava_lite.data.openai_format import parse_openai
from llava_lite.data.pairs import PAIR_KEYS, parse_pair
from llava_lite.data.rejects import Reject

FORMATS = ("llava", "sharegpt", "alpaca", "openai", "pairs", "text")
PathLike = Union[str, "os.PathLike[str]"]

_LLAVA_ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
_SHAREGPT_ROLES = {**_LLAVA_ROLES, "user": "user", "assistant": "assistant"}


@dataclass
class _Record:
    """Where one record came from, and how to resolve its images."""

    source: str
    id: str
    image_folder: str
    check_images: bool
    allow_absolute: bool = False

    @property
    def where(self) -> str:
        return f"{self.source} (id={self.id!r})" if self.id else self.source

    def fail(self, field: str, problem: str, reason: str = "malformed field") -> DataError:
        return DataError(f"{self.where}: field {field!r} {problem}", reason)

    def image(self, ref: Any, field: str) -> ImageRef:
        """Resolve one image reference: a data: URL is decoded, a path is joined to image_folder."""
        if not isinstance(ref, str) or not ref:
            raise self.fail(field, f"must be a non-empty string, got {ref!r}", "bad image reference")
        if ref.startswith("data:"):
            return decode_data_url(ref, f"{self.where}: field {field!r}")
        if ref.startswith(("http://", "https://")):
            raise self.fail(field, f"is a remote URL ({ref}); download the images and use local paths",
                            "remote image URL")
        path = resolve_image(self.image_folder, ref, self.allow_absolute, f"{self.where}: field {field!r}")
        if self.check_images and not os.path.isfile(path):
            raise self.fail(field, f"names a missing image file: {path}", "image file not found")
        return path

    def text(self, rec: dict, key: str, field: str = "") -> str:
        value = rec.get(key)
        if not isinstance(value, str):
            problem = "is missing" if value is None else f"must be a string, got {type(value).__name__}"
            raise self.fail(field or key, problem)
        return value

    def answer(self, role: str, content: str, field: str) -> Message:
        # validate() also rejects empty answers, but only this check can name the field.
        if role == "assistant" and not content.strip():
            raise self.fail(field, "is an empty assistant turn", "empty answer")
        return Message(role, content)


def _turns(rec: dict, r: _Record, roles: dict[str, str]) -> Conversation:
    """LLaVA and ShareGPT: `conversations` of {from, value}, optional top-level system and image(s)."""
    turns = rec.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise r.fail("conversations", "must be a non-empty list of {from, value} turns", "no conversations")
    messages = []
    if rec.get("system") is not None and r.text(rec, "system"):
        messages.append(Message("system", rec["system"]))
    for i, turn in enumerate(turns):
        field = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise r.fail(field, f"must be an object, got {type(turn).__name__}")
        speaker = r.text(turn, "from", f"{field}.from")
        if speaker not in roles:
            raise r.fail(f"{field}.from", f"has unknown role {speaker!r} (expected one of {sorted(roles)})",
                         "unknown role")
        messages.append(r.answer(roles[speaker], r.text(turn, "value", f"{field}.value"), f"{field}.value"))
    key = "images" if rec.get("images") is not None else "image"
    refs = rec.get(key)
    if refs is None:
        images = []
    elif isinstance(refs, list):
        images = [r.image(ref, f"{key}[{i}]") for i, ref in enumerate(refs)]
    else:
        images = [r.image(refs, key)]
    return Conversation(messages, images)


def _alpaca(rec: dict, r: _Record) -> Conversation:
    prompt = r.text(rec, "instruction")
    extra = rec.get("input")
    if extra is not None and not isinstance(extra, str):
        raise r.fail("input", f"must be a string, got {type(extra).__name__}")
    if extra:
        prompt += "\n\n" + extra
    return Conversation([Message("user", prompt), r.answer("assistant", r.text(rec, "output"), "output")])


def _text(rec: dict, r: _Record) -> Conversation:
    """A plain document ({"text": ...}): trained as an LM trains, `<bos>text<eos>` with loss on every token."""
    return Conversation([Message("user", ""), r.answer("assistant", r.text(rec, "text"), "text")], mode="plain")


_PARSERS: dict[str, Callable[[dict, _Record], Conversation]] = {
    "llava": lambda rec, r: _turns(rec, r, _LLAVA_ROLES),
    "sharegpt": lambda rec, r: _turns(rec, r, _SHAREGPT_ROLES),
    "alpaca": _alpaca,
    "openai": parse_openai,
    "pairs": parse_pair,
    "text": _text,
}


def _records(path: str) -> Iterator[tuple[int, Any, str]]:
    """Yield (n, record, json_error) from a JSON list (n = index) or JSONL (n = 1-based line)."""
    try:
        f = open(path, encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{path}: cannot open: {e}", "unreadable file") from None
    with f:
        first = ""
        while not first and (chunk := f.read(4096)):
            first = chunk.lstrip()[:1]
        f.seek(0)
        if first == "[":
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON: {e}", "not JSON") from None
            # Pop records as they are read so a large file is not held twice in memory.
            data.reverse()
            for i in range(len(data)):
                yield i, data.pop(), ""
            return
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), ""
            except json.JSONDecodeError as e:
                yield lineno, None, f"line is not valid JSON: {e}"


def _detect(rec: dict, path: str) -> str:
    keys = set(rec)
    if "conversations" in keys:
        turns = rec["conversations"] if isinstance(rec["conversations"], list) else []
        speakers = {t.get("from") for t in turns if isinstance(t, dict)}
        return "sharegpt" if keys & {"system", "images"} or speakers & {"user", "assistant"} else "llava"
    if "messages" in keys:
        return "openai"
    if set(PAIR_KEYS) <= keys:
        return "pairs"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "text" in keys:
        return "text"
    raise DataError(
        f"{path}: cannot tell the format from the first record's keys {sorted(keys)}: expected 'conversations' "
        "(llava/sharegpt), 'messages' (openai), 'instruction' + 'output' (alpaca), 'prompt' + 'chosen' + 'rejected' "
        "(pairs) or 'text' (text); pass fmt= explicitly"
    )


def iter_conversations(
    path: PathLike,
    fmt: str = "auto",
    image_folder: PathLike | None = None,
    *,
    errors: Literal["raise", "collect"] = "raise",
    bad: list[Reject] | None = None,
    check_images: bool = False,
    allow_absolute_images: bool = False,
) -> Iterator[Conversation]:
    """Stream validated Conversations from a file. With errors="collect", a bad record is appended to
    `bad` as a `Reject` (kind "record") instead of raising; problems with the file as a whole always
    raise. Image paths must stay inside `image_folder` unless `allow_absolute_images`."""
    if fmt != "auto" and fmt not in _PARSERS:
        raise ConfigError(f"fmt must be 'auto' or one of {FORMATS}, got {fmt!r}")
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    if errors == "collect" and bad is None:
        raise ValueError("errors='collect' needs a list passed as bad= to collect into")
    path = os.fspath(path)
    folder = os.fspath(image_folder) if image_folder is not None else os.path.dirname(os.path.abspath(path))
    records = _records(path)
    if fmt == "auto":
        seen = []
        for item in records:
            seen.append(item)
            if isinstance(item[1], dict):
                fmt = _detect(item[1], path)
                break
        records = itertools.chain(seen, records)
    # fmt is still "auto" only when no record is an object; each then fails the object check below.
    parse = _PARSERS.get(fmt, _PARSERS["llava"])
    for n, rec, json_error in records:
        source = f"{path}:{n}"
        try:
            rid = ""
            if json_error:
                raise DataError(f"{source}: {json_error}", "not JSON")
            if not isinstance(rec, dict):
                raise DataError(f"{source}: record must be a JSON object, got {type(rec).__name__}", "not an object")
            rid = "" if rec.get("id") is None else str(rec["id"])
            conv = parse(rec, _Record(source, rid, folder, check_images, allow_absolute_images))
            conv.id, conv.source = rid, source
            conv.validate()
        except DataError as e:
            if errors == "raise":
                raise
            bad.append(Reject(rid, source, e.reason, "record", 0, str(e)))
        else:
            yield conv


@overload
def read_conversations(path: PathLike, fmt: str = ..., image_folder: PathLike | None = ..., *,
                       errors: Literal["raise"] = ..., check_images: bool = ...,
                       allow_absolute_images: bool = ...) -> list[Conversation]: ...
@overload
def read_conversations(path: PathLike, fmt: str = ..., image_folder: PathLike | None = ..., *,
                       errors: Literal["collect"], check_images: bool = ...,
                       allow_absolute_images: bool = ...) -> tuple[list[Conversation], list[Reject]]: ...
def read_conversations(
    path: PathLike,
    fmt: str = "auto",
    image_folder: PathLike | None = None,
    *,
    errors: Literal["raise", "collect"] = "raise",
    check_images: bool = False,
    allow_absolute_images: bool = False,
) -> list[Conversation] | tuple[list[Conversation], list[Reject]]:
    """Read a whole file. errors="raise": the Conversations, or DataError at the first bad record.
    errors="collect": (good Conversations, a `Reject` for every bad record)."""
    bad: list[Reject] = []
    good = list(iter_conversations(path, fmt, image_folder, errors=errors, bad=bad, check_images=check_images,
                                   allow_absolute_images=allow_absolute_images))
    return (good, bad) if errors == "collect" else good
