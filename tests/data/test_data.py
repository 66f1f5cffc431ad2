"""Readers (llava / sharegpt / alpaca / openai / auto)."""
from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from llava_lite.data.conversation import DataError
from llava_lite.data.images import load_image
from llava_lite.data.readers import iter_conversations, read_conversations


def write_json(path: Path, records: list) -> Path:
    path.write_text(json.dumps(records))
    return path


def write_jsonl(path: Path, records: list, blank_first: bool = False) -> Path:
    lines = [json.dumps(r) for r in records]
    path.write_text(("\n" if blank_first else "") + "\n".join(lines) + "\n")
    return path


def png_data_url(size: tuple[int, int] = (3, 2)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [{"from": f, "value": v} for f, v in pairs]


LLAVA_RECORDS = [
    {"id": "a1", "image": "coco/1.jpg", "conversations": turns(("human", "<image>\nWhat is it?"), ("gpt", "A cat."),
                                                               ("human", "Colour?"), ("gpt", "Black."))},
    {"id": "a2", "image": ["x/1.jpg", "x/2.jpg"],
     "conversations": turns(("human", "<image> vs <image>: same?"), ("gpt", "No."))},
    {"id": 7, "conversations": turns(("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello."))},
]


# ---------------------------------------------------------------- llava


def test_llava_json(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", LLAVA_RECORDS)
    convs = read_conversations(path, fmt="llava")
    assert [c.id for c in convs] == ["a1", "a2", "7"]
    assert [c.source for c in convs] == [f"{path}:0", f"{path}:1", f"{path}:2"]
    one, two, text = convs
    assert [(m.role, m.content) for m in one.messages] == [
        ("user", "<image>\nWhat is it?"), ("assistant", "A cat."), ("user", "Colour?"), ("assistant", "Black.")
    ]
    # Image paths resolve against the JSON file's folder by default, and stay unopened strings.
    assert one.images == [os.path.join(tmp_path, "coco/1.jpg")]
    assert two.images == [os.path.join(tmp_path, "x/1.jpg"), os.path.join(tmp_path, "x/2.jpg")]
    assert text.images == [] and text.messages[0].role == "system"


def test_llava_image_folder_and_jsonl_line_numbers(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "train.jsonl", LLAVA_RECORDS, blank_first=True)
    convs = read_conversations(path, image_folder=tmp_path / "imgs")
    assert [c.source for c in convs] == [f"{path}:2", f"{path}:3", f"{path}:4"]  # 1-based, blank line counted
    assert convs[0].images == [os.path.join(tmp_path, "imgs", "coco/1.jpg")]


def test_caption_layout_reads_like_llava(tmp_path: Path) -> None:
    # blip_laion_cc_sbu_558k: the placeholder can come after the prompt.
    rec = {"id": "004539375", "image": "00453/004539375.jpg",
           "conversations": turns(("human", "Render a clear and concise summary of the photo.\n<image>"),
                                  ("gpt", "a red mattress topper"))}
    path = write_json(tmp_path / "blip_laion_cc_sbu_558k.json", [rec])
    (conv,) = read_conversations(path)
    assert conv.id == "004539375"
    assert conv.messages[0].content.endswith("<image>") and conv.messages[1].content == "a red mattress topper"
    assert conv.images == [os.path.join(tmp_path, "00453/004539375.jpg")]


# ---------------------------------------------------------------- sharegpt / alpaca / openai


def test_sharegpt(tmp_path: Path) -> None:
    recs = [
        {"system": "You are helpful.", "images": ["a.png"],
         "conversations": [{"from": "user", "value": "<image>Describe."}, {"from": "assistant", "value": "A dog."}]},
        {"conversations": turns(("human", "Hi"), ("gpt", "Hey."))},
    ]
    path = write_jsonl(tmp_path / "sg.jsonl", recs)
    first, second = read_conversations(path, fmt="sharegpt")
    assert [m.role for m in first.messages] == ["system", "user", "assistant"]
    assert first.messages[0].content == "You are helpful."
    assert first.images == [os.path.join(tmp_path, "a.png")]
    assert second.images == [] and [m.role for m in second.messages] == ["user", "assistant"]


def test_alpaca(tmp_path: Path) -> None:
    recs = [
        {"instruction": "Add.", "input": "2 + 2", "output": "4"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
        {"id": "x", "instruction": "Say bye.", "output": "Bye."},
    ]
    convs = read_conversations(write_json(tmp_path / "alpaca.json", recs), fmt="alpaca")
    assert [c.messages[0].content for c in convs] == ["Add.\n\n2 + 2", "Say hi.", "Say bye."]
    assert [c.messages[1].content for c in convs] == ["4", "Hi!", "Bye."]
    assert convs[2].id == "x" and all(c.images == [] for c in convs)


def test_openai_parts_and_data_url(tmp_path: Path) -> None:
    rec = {"id": "o1", "messages": [
        {"role": "system", "content": "Look carefully."},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": png_data_url((3, 2))}},
            {"type": "text", "text": "And this one?"},
            {"type": "image", "image": "b.jpg"},
        ]},
        {"role": "assistant", "content": [{"type": "text", "text": "Both red."}]},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]}
    (conv,) = read_conversations(write_jsonl(tmp_path / "chat.jsonl", [rec]), image_folder=tmp_path / "img")
    assert conv.messages[1].content == "<image>\nAnd this one?\n<image>"
    assert conv.messages[2].content == "Both red."
    decoded, path = conv.images
    assert isinstance(decoded, Image.Image) and decoded.size == (3, 2)
    assert path == os.path.join(tmp_path, "img", "b.jpg")
    assert load_image(decoded).getpixel((0, 0)) == (10, 20, 30)


# ---------------------------------------------------------------- auto detection


@pytest.mark.parametrize("rec, fmt_messages", [
    (LLAVA_RECORDS[0], "<image>\nWhat is it?"),
    ({"conversations": [{"from": "user", "value": "Q"}, {"from": "assistant", "value": "A"}]}, "Q"),
    ({"instruction": "Q", "input": "ctx", "output": "A"}, "Q\n\nctx"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}, "Q"),
])
def test_auto_detects_each_format(tmp_path: Path, rec: dict, fmt_messages: str) -> None:
    (conv,) = read_conversations(write_jsonl(tmp_path / "d.jsonl", [rec]))
    assert conv.messages[0].content == fmt_messages


def test_auto_unknown_layout_names_file_and_keys(tmp_path: Path) -> None:
    path = write_json(tmp_path / "weird.json", [{"prompt": "Q", "completion": "A"}])
    with pytest.raises(DataError, match=r"weird\.json.*'completion'.*'prompt'"):
        read_conversations(path)


# ---------------------------------------------------------------- malformed records

GOOD = {"id": "g", "conversations": turns(("human", "Q"), ("gpt", "A"))}


@pytest.mark.parametrize("bad, field", [
    ({"id": "b", "conversations": "Q then A"}, "conversations"),
    ({"id": "b"}, "conversations"),
    ({"id": "b", "conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "A"}]},
     "conversations[0].value"),
    ({"id": "b", "conversations": turns(("human", "Q"), ("bot", "A"))}, "conversations[1].from"),
    ({"id": "b", "conversations": turns(("human", "Q"), ("gpt", "  "))}, "conversations[1].value"),
    ({"id": "b", "image": "1.jpg", "conversations": turns(("human", "no placeholder"), ("gpt", "A"))}, "image"),
    ({"id": "b", "image": ["1.jpg", 5], "conversations": turns(("human", "<image><image>"), ("gpt", "A"))}, "image[1]"),
])
def test_malformed_record_error_names_file_record_and_field(tmp_path: Path, bad: dict, field: str) -> None:
    path = write_json(tmp_path / "mixed.json", [GOOD, bad])
    with pytest.raises(DataError) as err:
        read_conversations(path, fmt="llava")
    msg = str(err.value)
    assert "mixed.json:1 (id='b')" in msg and field in msg


@pytest.mark.parametrize("fmt, bad, field", [
    ("alpaca", {"instruction": "Q"}, "output"),
    ("alpaca", {"instruction": "Q", "input": ["x"], "output": "A"}, "input"),
    ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]}, "messages[1].role"),
    ("openai", {"messages": [{"role": "user", "content": [{"type": "audio"}]}, {"role": "assistant", "content": "A"}]},
     "messages[0].content[0].type"),
    ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]},
     "messages[1].content"),
    ("openai", {"messages": [{"role": "user", "content": [{"type": "image_url",
                                                           "image_url": {"url": "data:image/png;base64,AAAA"}}]}]},
     "messages[0].content[0].image_url.url"),
    ("sharegpt", {"conversations": turns(("user", "Q"), ("assistant", "A")), "system": 1}, "system"),
])
def test_malformed_jsonl_error_names_line_and_field(tmp_path: Path, fmt: str, bad: dict, field: str) -> None:
    good = {
        "alpaca": {"instruction": "Q", "output": "A"},
        "openai": {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
        "sharegpt": GOOD,
    }[fmt]
    path = write_jsonl(tmp_path / "data.jsonl", [good, good, bad])
    with pytest.raises(DataError) as err:
        read_conversations(path, fmt=fmt)
    assert "data.jsonl:3" in str(err.value) and field in str(err.value)


def test_collect_reports_every_bad_record(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join([
        json.dumps(GOOD),
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"id": "r", "conversations": turns(("human", "Q"), ("gpt", ""))}),
        json.dumps(GOOD),
        json.dumps({"id": "s", "conversations": turns(("gpt", "A"), ("human", "Q"))}),
    ]))
    good, bad = read_conversations(path, errors="collect")
    assert len(good) == 2
    assert [b.source for b in bad] == [f"{path}:{n}" for n in (2, 3, 4, 6)]
    assert "not valid JSON" in bad[0].message and "JSON object" in bad[1].message
    assert "conversations[1].value" in bad[2].message and "id='s'" in bad[3].message
    with pytest.raises(DataError, match=r"data\.jsonl:2"):
        read_conversations(path)


def test_iter_is_lazy_and_collects_into_list(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, {"id": "b"}])
    stream = iter_conversations(path)
    assert next(stream).id == "g"  # the good record arrives before the bad one is parsed
    with pytest.raises(DataError):
        next(stream)
    bad: list = []
    assert [c.id for c in iter_conversations(path, errors="collect", bad=bad)] == ["g"]
    assert len(bad) == 1 and bad[0].source == f"{path}:2"


def test_check_images_reports_missing_files(tmp_path: Path) -> None:
    Image.new("RGB", (2, 2)).save(tmp_path / "here.png")
    recs = [
        {"id": "ok", "image": "here.png", "conversations": turns(("human", "<image>"), ("gpt", "A"))},
        {"id": "gone", "image": "gone.png", "conversations": turns(("human", "<image>"), ("gpt", "A"))},
    ]
    path = write_json(tmp_path / "d.json", recs)
    assert len(read_conversations(path)) == 2  # not checked by default
    good, bad = read_conversations(path, errors="collect", check_images=True)
    assert [c.id for c in good] == ["ok"]
    assert len(bad) == 1 and "gone.png" in bad[0].message and "'image'" in bad[0].message
