"""webdataset shards: write LLaVA records with their image bytes; read them back as a stream.

Each sample is `<key>.json` (the LLaVA record, plus `image_keys` naming its image members in
order) and the image file's bytes as stored on disk (`<key>.png`, or `<key>.0.png`,
`<key>.1.jpg`... for several), never re-encoded, so pixels match the JSON path exactly.
Reading lives in `llava_lite.data.streaming` (training streams the shards with the same code);
`iter_shard_conversations` is re-exported here.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from llava_lite.data.readers import read_conversations
from llava_lite.data.streaming import iter_shard_conversations

from .formats import to_llava, to_text

__all__ = ["iter_shard_conversations", "write_shards"]

_EXT = {".jpg": "jpg", ".jpeg": "jpg", ".png": "png", ".webp": "webp"}


def _image_member(ref: object) -> tuple[str, bytes]:
    """(extension, bytes): file bytes as they are, or PNG for an in-memory image."""
    if isinstance(ref, Image.Image):
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return "png", buf.getvalue()
    ext = _EXT.get(os.path.splitext(str(ref))[1].lower())
    if ext is None:  # an odd format would not be decoded by name on the way back: store it as PNG
        with Image.open(str(ref)) as im:
            return _image_member(im.copy())
    return ext, Path(str(ref)).read_bytes()


def write_shards(
    src: Path,
    out_dir: Path,
    image_folder: Path | None = None,
    maxsize: float = 256e6,
    maxcount: int = 100_000,
    fmt: str = "auto",
) -> list[Path]:
    """Read a conversation file and write `out_dir/shard-000000.tar`..., each at most `maxsize` bytes."""
    convs = read_conversations(src, fmt, image_folder, check_images=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    folder = image_folder or Path(src).resolve().parent
    with wds.ShardWriter(str(out_dir / "shard-%06d.tar"), maxsize=maxsize, maxcount=maxcount, verbose=0) as sink:
        for i, conv in enumerate(tqdm(convs, desc="shards", leave=False)):
            key = f"{i:09d}"  # webdataset keys must not contain dots; the record id lives in the JSON
            sample: dict[str, object] = {"__key__": key}
            names = []
            for j, ref in enumerate(conv.images):
                ext, data = _image_member(ref)
                name = ext if len(conv.images) == 1 else f"{j}.{ext}"
                sample[name] = data
                names.append(name)
            rec = to_text(conv) if conv.mode == "plain" else to_llava(conv, folder)  # a document stays one
            sample["json"] = json.dumps({**rec, "image_keys": names}).encode()
            sink.write(sample)
    return sorted(out_dir.glob("shard-*.tar"))
