"""Isolated turns (data/isolate.py): a record of independent questions trains exactly as its
one-question records would, with the image encoded once; records that cannot be split train whole."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.runs import CONFIGS, base, losses
from helpers.tiny import make_llava_data
from PIL import Image

from llava_lite.config import ConfigError, ModelConfig, VisionConfig, load_config
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.dataset import Collator, ConversationDataset
from llava_lite.data.isolate import split_turns
from llava_lite.data.loader import check_data
from llava_lite.data.packing import PackingCollator
from llava_lite.model.llava import LlavaLite
from llava_lite.model.packed_attention import segment_attention, segment_positions
from llava_lite.train.recipe import Trainer

QA = [("What colour is the cube?", "Red."), ("How many spheres are there?", "Three."),
      ("Is there a cone?", "No, there is no cone in the picture.")]


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def model(request, tiny_lm):
    torch.manual_seed(0)
    cfg = ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm),
                      attn_implementation=request.param)
    return LlavaLite.build(cfg).train()


def record(qa=QA, first="<image>\n{q}", isolate=True, image=None):
    image = image or Image.new("RGB", (40, 32), (200, 30, 30))
    messages = []
    for k, (q, a) in enumerate(qa):
        messages += [Message("user", first.format(q=q) if k == 0 else q), Message("assistant", a)]
    return Conversation(messages, [image], "r", "t:0", isolate_turns=isolate)


def dataset(model, convs, max_length=512, system_prompt=None):
    return ConversationDataset(convs, model.tokenizer, model.vision.image_to_pixels,
                               image_token_id=model.image_token_id, image_seq_len=model.image_seq_len,
                               max_length=max_length, system_prompt=system_prompt)


def run(model, samples):
    batch = Collator(model.tokenizer.pad_token_id)(samples)
    return model(**{k: v for k, v in batch.items() if k != "num_skipped"})


def test_split_turns_puts_each_question_where_the_first_one_was():
    parts = split_turns(record(first="<image>\nLook closely. {q}"))
    assert [p.messages[0].content for p in parts] == [f"<image>\nLook closely. {QA[0][0]}", f"<image>\n{QA[1][0]}",
                                                      f"<image>\n{QA[2][0]}"]
    assert [p.messages[1].content for p in parts] == [a for _, a in QA]
    assert split_turns(record(QA[:1])) is None  # one question: nothing to isolate
    two_images = record()
    two_images.messages[2].content = "<image>\n" + QA[1][0]
    assert split_turns(two_images) is None  # an image in a later turn


@pytest.mark.parametrize("system", [None, "You are a careful assistant."])
def test_isolated_record_is_its_one_question_records_with_one_image(model, system):
    ds = dataset(model, [record()], system_prompt=system)
    iso = ds[0]
    singles = [dataset(model, [record([qa], isolate=False)], system_prompt=system)[0] for qa in QA]
    seg = iso.segment_ids
    n = int((seg == 0).sum())
    assert seg.tolist() == [0] * n + [k for k, s in enumerate(singles, 1) for _ in range(len(s.input_ids) - n)]
    assert (iso.input_ids[:n] == model.image_token_id).sum() == model.image_seq_len  # the image once, in the prefix
    for k, s in enumerate(singles, 1):
        assert iso.input_ids[:n].tolist() == s.input_ids[:n].tolist()
        assert iso.input_ids[seg == k].tolist() == s.input_ids[n:].tolist()
        assert iso.labels[seg == k].tolist() == s.labels[n:].tolist()
    assert iso.pixel_values.shape[0] == 1

    # the loss and its gradients are the one-question records' summed: each turn sees the image and itself
    model.zero_grad(set_to_none=True)
    out = run(model, [iso])
    out.loss_sum.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    alone = [run(model, [s]) for s in singles]
    total = sum(o.loss_sum for o in alone)
    total.backward()
    assert int(out.num_tokens) == sum(int(o.num_tokens) for o in alone)
    torch.testing.assert_close(out.loss_sum, total, rtol=1e-5, atol=1e-5)
    assert any("projector" in n for n in grads)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    model.zero_grad(set_to_none=True)

    # not isolated, the same record is another computation: later questions see earlier answers
    whole = run(model, [dataset(model, [record(isolate=False)], system_prompt=system)[0]])
    assert not torch.allclose(whole.loss_sum, total, rtol=1e-3)


def test_a_batch_mixes_isolated_records_with_others_and_padding(model):
    plain = Conversation([Message("user", "Add 2 and 3."), Message("assistant", "5")], [], "p", "t:1")
    other = record(QA[1:], image=Image.new("RGB", (32, 32), (20, 20, 220)))
    samples = [dataset(model, [c])[0] for c in (record(), plain, other)]
    batch = Collator(model.tokenizer.pad_token_id)(samples)
    assert (batch["segment_ids"][1, :len(samples[1].input_ids)] == 0).all()  # an ordinary sample: one segment
    assert (batch["segment_ids"][batch["attention_mask"] == 0] == -1).all()
    with torch.no_grad():
        together = model(**{k: v for k, v in batch.items() if k != "num_skipped"}).loss_sum
        apart = sum(run(model, [s]).loss_sum for s in samples)
    torch.testing.assert_close(together, apart, rtol=1e-5, atol=1e-5)


def test_records_that_cannot_be_split_render_whole(model):
    after = dataset(model, [record(first="{q}\n<image>")])[0]  # the image follows the first question
    whole = dataset(model, [record(first="{q}\n<image>", isolate=False)])[0]
    assert after.segment_ids is None and after.input_ids.tolist() == whole.input_ids.tolist()
    assert dataset(model, [record(QA[:1])])[0].segment_ids is None


def test_turns_that_do_not_fit_are_dropped_whole(model):
    full = dataset(model, [record()])[0]
    n = int((full.segment_ids == 0).sum())
    two = int((full.segment_ids <= 2).sum())
    cut = dataset(model, [record()], max_length=two + 1)[0]
    assert cut.input_ids.tolist() == full.input_ids[:two].tolist()
    assert cut.segment_ids.max() == 2
    one = n + int((full.segment_ids == 1).sum())
    first = dataset(model, [record()], max_length=one - 1)[0]  # not even question 1 fits: cut as render cuts it
    assert first.segment_ids is None and first.input_ids.tolist() == full.input_ids[:one - 1].tolist()


def test_positions_restart_after_the_prefix_and_no_one_sees_padding():
    seg = torch.tensor([[0, 0, 1, 1, 1, 2, 2, -1]])
    assert segment_positions(seg)[0, :7].tolist() == [0, 1, 2, 3, 4, 2, 3]  # padding: any position

    class LM:
        class config:
            _attn_implementation = "sdpa"

    mask = segment_attention(LM, seg, torch.float32)["attention_mask"][0, 0]
    assert mask[5].tolist() == [True, True, False, False, False, True, False, False]  # turn 2 sees prefix + itself
    assert not mask[:7, 7].any() and mask[7, 7]
    LM.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="sdpa or eager"):
        segment_attention(LM, seg, torch.float32)


def test_packing_and_shards_refuse_isolated_turns(model, tmp_path):
    data = make_llava_data(tmp_path / "data", n=4)
    src = f"{{path: {data['conversations']}, isolate_turns: true}}"
    cfg = load_config(CONFIGS / "stage2.yaml", [f"data.sources=[{src}]", "data.packing=true"])
    with pytest.raises(ConfigError, match="isolate_turns cannot be combined with data.packing"):
        check_data(cfg.data)
    cfg = load_config(CONFIGS / "stage2.yaml", [f"data.sources=[{{shards: {tmp_path}/s.tar, isolate_turns: true}}]"])
    with pytest.raises(ConfigError, match="shard streams cannot isolate turns"):
        check_data(cfg.data)
    with pytest.raises(ValueError, match="packing cannot hold isolated turns"):
        PackingCollator(0, 512)([dataset(model, [record()])[0]])


@pytest.mark.slow  # two tiny training runs
def test_training_with_isolated_turns_and_kl_to_base(tiny_lm, tmp_path):
    """A source with isolate_turns trains (with the KL to the base model on the same layout: zero
    at the first step, where tuned == base), and differs from the same data trained whole."""
    data = make_llava_data(tmp_path / "data", n=8)
    folder = data["conversations"].parent / "images"

    def train(out, isolate):
        src = f"{{path: {data['conversations']}, image_folder: {folder}, isolate_turns: {str(isolate).lower()}}}"
        cfg = load_config(CONFIGS / "stage2.yaml", base(tiny_lm, out, f"data.sources=[{src}]", "train.max_steps=3",
                                                        "train.lr=3e-3", "train.kl_to_base=0.5"))
        Trainer(cfg).run()
        return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    iso, whole = train(tmp_path / "iso", True), train(tmp_path / "whole", False)
    assert iso[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert iso[0]["supervised_tokens"] == whole[0]["supervised_tokens"]  # the same answers are supervised
    assert losses(tmp_path / "iso") != losses(tmp_path / "whole")
