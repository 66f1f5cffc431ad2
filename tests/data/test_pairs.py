"""Preference pairs (data/pairs.py): both spellings read to one Conversation, bad pairs are named
bad records, images stay confined, and a pair batch holds chosen rows, then rejected rows, over
each image once."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny import make_pair_data
from helpers.tokenizers import saved_tokenizer
from PIL import Image

from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.conversation import DataError
from llava_lite.data.dataset import Collator, ConversationDataset
from llava_lite.data.readers import read_conversations


def write(tmp_path, records, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "b.png")
    return path


def test_llava_next_and_trl_records_read_alike(tmp_path):
    records = [
        {"id": "n", "image": "a.png", "prompt": "<image>\nWhat colour?", "chosen": "Red.", "rejected": "Blue."},
        {"id": "t", "images": ["a.png"], "prompt": [{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "What colour?"}]}],
         "chosen": [{"role": "assistant", "content": "Red."}], "rejected": [{"role": "assistant", "content": "Blue."}]},
        {"id": "bare", "image": "a.png", "prompt": "What colour?", "chosen": "Red.", "rejected": "Blue."},
        {"id": "text", "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
         "chosen": "4", "rejected": "5"},
    ]
    convs = read_conversations(write(tmp_path, records))  # format detected from the keys
    for c in convs[:3]:
        assert [(m.role, m.content) for m in c.messages] == [("user", f"{IMAGE_TOKEN}\nWhat colour?"),
                                                             ("assistant", "Red.")]
        assert c.images == [str(tmp_path / "a.png")] and c.rejected == "Blue."
    assert [m.role for m in convs[3].messages] == ["system", "user", "assistant"] and not convs[3].images
    rejected = convs[0].rejected_conversation()
    assert rejected.messages[-1].content == "Blue." and rejected.images == convs[0].images
    assert rejected.messages[:-1] == convs[0].messages[:-1]


@pytest.mark.parametrize("record, reason", [
    ({"prompt": "Q?", "chosen": "A"}, "not a pair"),
    ({"prompt": "Q?", "chosen": "A", "rejected": " A "}, "identical pair"),
    ({"prompt": "Q?", "chosen": "A", "rejected": ""}, "empty answer"),
    ({"prompt": "Q?", "chosen": "A", "rejected": "B <image>"}, "placeholder inside answer"),
    ({"prompt": "Q?", "chosen": [{"role": "user", "content": "A"}], "rejected": "B"}, "not a pair"),
    ({"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}], "images": ["a.png"],
      "chosen": "A", "rejected": "B"}, "placeholder count mismatch"),
    ({"image": "../outside.png", "prompt": "<image>\nQ?", "chosen": "A", "rejected": "B"}, "path escapes image folder"),
    ({"prompt": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], "chosen": "A",
      "rejected": "B"}, "not a pair"),
])
def test_bad_pairs_are_bad_records(tmp_path, record, reason):
    good = {"prompt": "Q?", "chosen": "A", "rejected": "B"}
    convs, bad = read_conversations(write(tmp_path, [good, record]), "pairs", errors="collect")
    assert len(convs) == 1 and len(bad) == 1
    assert bad[0].reason == reason, bad[0].message
    assert ":2" in bad[0].source  # the record is named by its line
    with pytest.raises(DataError):
        read_conversations(write(tmp_path, [record]), "pairs")


def test_pair_batch_is_chosen_then_rejected_over_each_image_once(tmp_path):
    paths = make_pair_data(tmp_path, n=3, text=1)
    convs = read_conversations(paths["pairs"], image_folder=tmp_path / "images")
    tok = saved_tokenizer("chatml", tmp_path)
    ds = ConversationDataset(convs, tok, lambda im: torch.zeros(1, 3, 4, 4),
                             image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_len=2, max_length=64,
                             pairs=True)
    batch = Collator(tok.pad_token_id)([ds[0], ds[1], ds[3]])  # two image pairs and the text pair
    assert batch["input_ids"].shape[0] == 6 and batch["pixel_values"].shape[0] == 2
    assert batch["image_rows"].tolist() == [0, 1, 0, 1]
    rows = [tok.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])
            for ids, labels in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    assert rows[0].startswith("The image is red") and rows[3].startswith("The image is green")
    assert rows[2].startswith("2") and rows[5].startswith("3")
    # prompts are identical within a pair
    for i in range(3):
        a, b = batch["input_ids"][i], batch["input_ids"][i + 3]
        first = int((batch["labels"][i] != IGNORE_INDEX).nonzero()[0])
        assert torch.equal(a[:first], b[:first])
    # an SFT dataset trains on the chosen answer alone
    plain = ConversationDataset(convs, tok, lambda im: torch.zeros(1, 3, 4, 4),
                                image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_len=2, max_length=64)
    assert plain[0].rejected is None and "image_rows" not in Collator(tok.pad_token_id)([plain[0]])


def test_pairs_written_by_data_tools_read_back_the_same(tmp_path):
    from data_tools.formats import write_conversations

    records = [
        {"id": "n", "image": "a.png", "prompt": "<image>\nWhat colour?", "chosen": "Red.", "rejected": "Blue."},
        {"id": "s", "image": ["a.png", "b.png"], "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]}],
         "chosen": "No.", "rejected": "Yes."},
    ]
    before = read_conversations(write(tmp_path, records))
    out = tmp_path / "out" / "pairs.jsonl"
    assert write_conversations(before, out, "pairs", image_folder=tmp_path) == []
    after = read_conversations(out, image_folder=tmp_path)
    key = lambda c: ([(m.role, m.content) for m in c.messages], c.images, c.rejected, c.id)
    assert [key(c) for c in after] == [key(c) for c in before]
    assert "prompt" in json.loads(out.read_text().splitlines()[0]) and before[1].images[1].endswith("b.png")
