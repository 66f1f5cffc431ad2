"""Format conversion and validation, over `llava_lite.data`'s readers and our writers."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from llava_lite.data.readers import read_conversations

from .formats import write_conversations


@dataclass
class Problem:
    file: str
    line: int  # 1-based line where the record starts
    record: int  # index for a JSON list, line for JSONL
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def convert(
    src: Path, dst: Path, to: str, src_format: str = "auto", image_folder: Path | None = None, out_image_folder: Path | None = None
) -> dict[str, int | list]:
    """Read `src` (bad records are reported, not converted) and write it to `dst` in format `to`.

    Image paths are resolved against `image_folder` (default: src's folder) and written
    relative to `out_image_folder` (default: the same folder), so references keep working."""
    convs, bad = read_conversations(src, src_format, image_folder, errors="collect")
    folder = out_image_folder or image_folder or Path(src).resolve().parent
    skipped = write_conversations(convs, dst, to, folder)
    return {"read": len(convs) + len(bad), "written": len(convs) - len(skipped), "bad": bad, "skipped": skipped}


def record_lines(path: Path) -> list[int]:
    """1-based line on which each top-level element of a JSON list starts."""
    text = Path(path).read_text(encoding="utf-8-sig")
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)


def validate(path: Path, fmt: str = "auto", image_folder: Path | None = None, check_images: bool = True) -> tuple[int, list[Problem]]:
    """(number of good records, every bad record with its file, line and reason)."""
    good, bad = read_conversations(path, fmt, image_folder, errors="collect", check_images=check_images)
    is_list = Path(path).read_text(encoding="utf-8-sig").lstrip()[:1] == "["
    starts = record_lines(path) if is_list and bad else []
    problems = []
    for source, reason in bad:
        file, _, n = source.rpartition(":")
        n = int(n)
        line = starts[n] if is_list else n
        # The reader's reason starts with the source; keep what follows it (the id, then the field).
        problems.append(Problem(os.fspath(file), line, n, reason[len(source):].lstrip(": ") if reason.startswith(source) else reason))
    return len(good), problems
