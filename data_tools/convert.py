"""Format conversion and validation, over `llava_lite.data`'s readers and our writers."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from llava_lite.data.conversation import DataError
from llava_lite.data.images import load_image
from llava_lite.data.readers import read_conversations

from .formats import write_conversations


@dataclass
class Problem:
    file: str
    line: int  # 1-based line where the record starts
    record: int  # index for a JSON list, line for JSONL
    reason: str
    kind: str = "bad record"  # the short label counted per reason (DataError.reason)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def convert(
    src: Path,
    dst: Path,
    to: str,
    src_format: str = "auto",
    image_folder: Path | None = None,
    out_image_folder: Path | None = None,
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


def validate(path: Path, fmt: str = "auto", image_folder: Path | None = None, check_images: bool = True,
             decode_images: bool = False, allow_absolute_images: bool = False) -> tuple[int, list[Problem]]:
    """(number of good records, every bad record with its file, line and reason). `check_images`:
    image files must exist; `decode_images`: every image is decoded as training decodes it
    (`load_image`), so what passes here is what training accepts. An empty file is a problem."""
    good, bad = read_conversations(path, fmt, image_folder, errors="collect", check_images=check_images,
                                   allow_absolute_images=allow_absolute_images)
    found = [(b.source, b.message, b.reason) for b in bad]
    n_good = len(good)
    if decode_images:
        for conv in good:
            for i, ref in enumerate(conv.images):
                try:
                    load_image(ref, where=f"{conv.where} field 'image' [{i}]")
                except DataError as e:
                    found.append((conv.source, str(e), e.reason))
                    n_good -= 1
                    break
        found.sort(key=lambda f: int(f[0].rpartition(":")[2]))
    if not good and not bad:
        return 0, [Problem(os.fspath(path), 0, 0, "the file holds no records", "empty file")]
    is_list = Path(path).read_text(encoding="utf-8-sig").lstrip()[:1] == "["
    starts = record_lines(path) if is_list and found else []
    problems = []
    for source, message, reason in found:
        file, _, n = source.rpartition(":")
        n = int(n)
        line = starts[n] if is_list else n
        # The reader's reason starts with the source; keep what follows it (the id, then the field).
        text = message[len(source):].lstrip(": ") if message.startswith(source) else message
        problems.append(Problem(os.fspath(file), line, n, text, reason))
    return n_good, problems
