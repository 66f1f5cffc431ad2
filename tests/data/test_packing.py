"""Padding-free packing: packed rows give the loss, gradients and logits of the samples run one by
one, padded; training with data.packing resumes exactly and logs its padding fraction."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.runs import CONFIGS, base, kill_at, losses, source
from helpers.tiny import make_llava_data
from PIL import Image

from llava_lite.config import ModelConfig, VisionConfig, load_config
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.dataset import Collator, ConversationDataset
from llava_lite.data.packing import PackingCollator, balance, first_fit, padding_fraction
from llava_lite.model.llava import LlavaLite
from llava_lite.model.packed_attention import NAME
from llava_lite.train.recipe import Trainer


@pytest.fixture(scope="module")
def model(tiny_lm):
    torch.manual_seed(0)
    m = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm)))
    return m.eval()


def samples(model, convs):
    ds = ConversationDataset(convs, model.tokenizer, model.vision.image_to_pixels, image_token_id=model.image_token_id,
                             image_seq_len=model.image_seq_len, max_length=256)
    return [ds[i] for i in range(len(ds))]


def image_convs():
    colours = [(255, 0, 0), (0, 0, 255), (0, 200, 0), (200, 200, 0)]
    ims = [Image.new("RGB", (32 + 4 * i, 32), c) for i, c in enumerate(colours)]
    return [
        Conversation([Message("user", "<image>\nWhat colour?"), Message("assistant", "Red.")], [ims[0]], "a", "t:0"),
        Conversation([Message("user", "<image><image>\nSame colour, both of them?"),
                      Message("assistant", "No, the first is blue and the second is green.")], ims[1:3], "b", "t:1"),
        Conversation([Message("user", "<image>\nDescribe."), Message("assistant", "A yellow square."),
                      Message("user", "Sure?"), Message("assistant", "Yes, quite sure.")], [ims[3]], "c", "t:2"),
    ]


def text_convs():
    return [Conversation([Message("user", f"Add {i} and 2." + " Think." * i),
                          Message("assistant", f"{i + 2}, the sum.")],
                         [], f"t{i}", f"t:{i}") for i in range(5)]


def test_first_fit_fills_rows_longest_first():
    rows = first_fit([5, 9, 3, 6, 2], capacity=10)
    assert rows == [[1], [3, 2], [0, 4]]  # 9 | 6+3 | 5+2
    assert sorted(i for r in rows for i in r) == list(range(5))
    assert first_fit([12, 3], capacity=10) == [[0], [1]]  # too long: a row of its own


def test_balance_spreads_samples_over_as_few_rows_evenly():
    assert first_fit([6, 5, 1], capacity=8) == [[0, 2], [1]]  # rows of 7 and 5: 2 of 14 positions padded
    assert balance([6, 5, 1], capacity=8) == [[0], [1, 2]]  # rows of 6 and 6: none
    assert balance([10, 9, 2, 1], capacity=12) == [[0, 3], [1, 2]]
    assert balance([12, 3], capacity=10) == [[0], [1]]


def test_packed_rows_hold_samples_with_restarting_positions(model):
    s = samples(model, text_convs())
    b = PackingCollator(model.tokenizer.pad_token_id, max_length=96)(s)
    padded = Collator(model.tokenizer.pad_token_id)(s)
    assert b["input_ids"].shape[0] < len(s)  # several samples share a row
    assert int(b["attention_mask"].sum()) == sum(len(x.input_ids) for x in s)
    assert padding_fraction(b["attention_mask"]) < padding_fraction(padded["attention_mask"])
    for _row, pos in zip(b["input_ids"], b["position_ids"]):
        starts = (pos == 0).nonzero().flatten().tolist()
        assert starts[0] == 0 and all(int(pos[i + 1]) in (0, int(pos[i]) + 1) for i in range(len(pos) - 1))
    # the first label of every sample is never a target (it would be predicted across the boundary)
    assert (b["labels"][b["position_ids"] == 0] == -100).all()


@pytest.mark.parametrize("kind", ["image", "text", "checkpointed", "eager"])
def test_packed_equals_padded_loss_and_gradients(model, tiny_lm, kind):
    """SDPA (sample by sample), under gradient checkpointing, and eager (block-diagonal mask)."""
    if kind in ("checkpointed", "eager"):
        torch.manual_seed(0)
        cfg = ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm),
                          attn_implementation="eager" if kind == "eager" else "sdpa")
        model = LlavaLite.build(cfg).train()
        if kind == "checkpointed":
            model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    convs = text_convs() if kind == "text" else image_convs()
    s = samples(model, convs)
    padded = Collator(model.tokenizer.pad_token_id)(s)
    packed = PackingCollator(model.tokenizer.pad_token_id, max_length=256)(s)
    assert packed["input_ids"].shape[0] == 1  # every sample in one row
    results = []
    for batch in (padded, packed):
        model.zero_grad(set_to_none=True)
        out = model(**{k: v for k, v in batch.items() if k != "num_skipped"})
        out.loss_sum.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (a, ga), (b, gb) = results
    assert int(a.num_tokens) == int(b.num_tokens) > 0
    torch.testing.assert_close(b.loss_sum, a.loss_sum, rtol=1e-5, atol=1e-5)
    assert ga.keys() == gb.keys() and any("projector" in n for n in ga) == (kind != "text")
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-5, atol=1e-5, msg=n)
    model.zero_grad(set_to_none=True)


def test_packed_logits_equal_each_sample_alone(model):
    """Inference on a packed row (no labels) gives every sample the logits it gets alone: attention
    never crosses samples and positions restart, which is all generation relies on."""
    s = samples(model, image_convs())
    packed = PackingCollator(model.tokenizer.pad_token_id, max_length=256)(s)
    with torch.no_grad():
        row = model(packed["input_ids"], position_ids=packed["position_ids"],
                    pixel_values=packed["pixel_values"]).logits
        order = balance([len(x.input_ids) for x in s], 256)[0]
        start = 0
        for i in order:
            n = len(s[i].input_ids)
            alone = model(s[i].input_ids[None], pixel_values=s[i].pixel_values).logits[0]
            torch.testing.assert_close(row[0, start:start + n], alone, rtol=1e-5, atol=1e-5)
            start += n
        assert model.lm.config._attn_implementation == NAME  # SDPA attends sample by sample, no [T, T] mask
        # an unpacked call is the plain causal LM: position_ids=None leaves the old path untouched
        ids = s[0].input_ids[None]
        torch.testing.assert_close(model(ids, pixel_values=s[0].pixel_values).logits,
                                   model(ids, torch.ones_like(ids), pixel_values=s[0].pixel_values).logits)


@pytest.mark.slow  # packed and padded training runs, killed and resumed
def test_packing_trains_like_padding_resumes_exactly_and_logs_padding(tiny_lm, tmp_path, monkeypatch):
    data = make_llava_data(tmp_path / "data", n=24)
    args = ["train.max_steps=8", "train.save_every=4", "train.lr=3e-3"]
    cfg = lambda out, *extra: load_config(CONFIGS / "stage2.yaml", base(tiny_lm, out, source(data["conversations"]),
                                                                          *args, *extra))
    Trainer(cfg(tmp_path / "padded")).run()
    Trainer(cfg(tmp_path / "a", "data.packing=true")).run()
    kill_at(monkeypatch, 6)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "b", "data.packing=true")).run()
    monkeypatch.undo()
    Trainer(cfg(tmp_path / "b", "data.packing=true"), resume=True).run()
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # bit-exact resume
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "padded"), rel=1e-4)  # same training
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("padded", "a")}
    pad = {name: sum(r["padding_fraction"] for r in rs) / len(rs) for name, rs in rows.items()}
    assert all(0 <= r["padding_fraction"] < 1 for rs in rows.values() for r in rs)
    assert pad["a"] < pad["padded"], pad
    assert [r["supervised_tokens"] for r in rows["a"]] == [r["supervised_tokens"] for r in rows["padded"]]
