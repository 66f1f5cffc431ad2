"""Fusion, loss, generation and save/load on a tiny random model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from llava_lite.config import LoraConfig, ModelConfig, VisionConfig
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.dataset import Collator, ConversationDataset
from llava_lite.infer.decode import generate
from llava_lite.model.llava import LlavaLite
from llava_lite.model.lm import apply_lora
from llava_lite.model.projector import build_projector


@pytest.fixture(scope="module")
def model(tiny_lm):
    torch.manual_seed(0)
    return LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm))).eval()


def batch_for(model, convs):
    ds = ConversationDataset(convs, model.tokenizer, model.vision.image_to_pixels, image_token_id=model.image_token_id,
                             image_seq_len=model.image_seq_len, max_length=256)
    return Collator(model.tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])


def convs():
    red, blue = Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (30, 30), (0, 0, 255))
    return [
        Conversation([Message("user", "<image>\nWhat colour?"), Message("assistant", "Red.")], [red], "a", "t:0"),
        Conversation([Message("user", "Add 1 and 2."), Message("assistant", "3, which is the sum.")], [], "b", "t:1"),
        Conversation([Message("user", "<image><image>\nSame?"), Message("assistant", "No.")], [red, blue], "c", "t:2"),
    ]


def inputs(b):
    return {k: v for k, v in b.items() if k != "num_skipped"}


def test_loss_matches_full_logits_reference(model):
    b = batch_for(model, convs())
    out = model(**inputs(b))
    logits = model(**{k: v for k, v in inputs(b).items() if k != "labels"}).logits  # [B, T, V]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                          ignore_index=-100)
    assert torch.allclose(out.loss, ref, atol=1e-5)
    assert out.num_tokens == (b["labels"][:, 1:] != -100).sum()


def test_collator_carries_only_existing_images(model):
    b = batch_for(model, convs())
    assert b["pixel_values"].shape[0] == 3  # 1 + 0 + 2 images, no dummy for the text-only sample
    text_only = batch_for(model, convs()[1:2])
    assert text_only["pixel_values"] is None
    assert (b["attention_mask"].sum(1) > 0).all() and b["input_ids"].shape[1] % 8 == 0


def test_text_only_never_calls_vision(model, monkeypatch):
    b = batch_for(model, convs()[1:2])

    def boom(*a, **k):
        raise AssertionError("vision tower called for a text-only batch")

    monkeypatch.setattr(model.vision, "forward", boom)
    assert torch.isfinite(model(**inputs(b)).loss)


def test_image_features_fill_placeholders(model):
    """Changing an image changes the logits only at and after its placeholders."""
    b = batch_for(model, convs()[:1])
    kw = {k: v for k, v in inputs(b).items() if k != "labels"}
    base = model(**kw).logits
    kw["pixel_values"] = kw["pixel_values"].flip(-1) + 1.0
    moved = model(**kw).logits
    first = int((b["input_ids"][0] == model.image_token_id).nonzero()[0])
    assert torch.allclose(base[0, :first], moved[0, :first])
    assert not torch.allclose(base[0, first:], moved[0, first:])


def test_placeholder_count_mismatch_is_an_error(model):
    b = batch_for(model, convs()[:1])
    kw = inputs(b)
    kw["pixel_values"] = torch.cat([kw["pixel_values"], kw["pixel_values"]])
    with pytest.raises(ValueError, match="do not fill"):
        model(**kw)
    kw["pixel_values"] = None
    with pytest.raises(ValueError, match="no pixel_values"):
        model(**kw)


def test_vision_tower_stays_frozen_and_in_eval(model):
    model.train()
    assert not model.vision.visual.training
    assert not any(p.requires_grad for p in model.vision.parameters())
    model.eval()


@pytest.mark.parametrize("name,layers", [("linear", 1), ("mlp2x_gelu", 2), ("mlp3x_gelu", 3)])
def test_projectors(name, layers):
    proj = build_projector(name, 16, 32)
    assert sum(isinstance(m, torch.nn.Linear) for m in proj.modules()) == layers
    assert proj(torch.randn(2, 5, 16)).shape == (2, 5, 32)
    with pytest.raises(ValueError, match="unknown projector"):
        build_projector("mlp2x_relu", 16, 32)


def test_generate_greedy_streams_and_stops(model):
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}],
                                                 add_generation_prompt=True, tokenize=True)["input_ids"]
    streamed = []
    [out] = generate(model, [prompt], max_new_tokens=6, on_token=lambda row, t: streamed.append((row, t)))
    assert streamed == [(0, t) for t in out] and 0 < len(out) <= 6
    assert generate(model, [prompt], max_new_tokens=6) == [out]  # greedy is deterministic
    # the first greedy token equals the argmax of a plain forward pass
    logits = model(torch.tensor([prompt])).logits
    assert out[0] == int(logits[0, -1].argmax()) or out[0] in model.stop_token_ids()
    # a callback returning True ends its row after that token
    assert generate(model, [prompt], max_new_tokens=6, on_token=lambda row, t: True) == [out[:1]]
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    s1 = generate(model, [prompt], max_new_tokens=6, temperature=1.0, top_p=0.9, generator=g1)
    assert s1 == generate(model, [prompt], max_new_tokens=6, temperature=1.0, top_p=0.9, generator=g2)


def test_batched_greedy_equals_one_at_a_time(model):
    """Left padding, per-row positions and the shared KV cache change nothing: each prompt of a batch
    gets the tokens it gets alone (prompts of different lengths, with 0, 1 and 2 images)."""
    from llava_lite.infer.chat import Assistant

    assistant = Assistant(model)
    chats = [([Message("user", c.messages[0].content)], c.images) for c in convs()]
    chats.append(([Message("user", "A much longer question, so that the others need left padding. " * 3)], []))
    encoded = [assistant.encode(m, list(im))[:2] for m, im in chats]
    alone = [generate(model, [ids[0].tolist()], pixels, max_new_tokens=5)[0] for ids, pixels in encoded]
    pixels = torch.cat([p for _, p in encoded if p is not None])
    batched = generate(model, [ids[0].tolist() for ids, _ in encoded], pixels, max_new_tokens=5)
    assert batched == alone
    assert len({len(ids[0]) for ids, _ in encoded}) == len(encoded)  # all prompt lengths differ
    assert any(len(t) == 5 for t in alone)  # the comparison covers several decoding steps
    assert assistant.reply_batch(chats, max_new_tokens=5) == [model.tokenizer.decode(t, skip_special_tokens=True)
                                                               for t in alone]


def _same_logits(a, b, batch):
    kw = {k: v for k, v in inputs(batch).items() if k != "labels"}
    return torch.allclose(a(**kw).logits, b(**kw).logits, atol=1e-5)


def test_save_load_full(model, tmp_path):
    b = batch_for(model, convs())
    model.save_pretrained(tmp_path / "m")
    loaded = LlavaLite.from_pretrained(tmp_path / "m")
    assert loaded.lm_weights == "full" and _same_logits(model, loaded, b)
    assert (tmp_path / "m" / "vision" / "open_clip_model.safetensors").is_file()


def test_save_load_lora_and_reference(tiny_lm, tmp_path):
    torch.manual_seed(1)
    m = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm)))
    m.lm.requires_grad_(False)
    b = batch_for(m, convs())
    m.save_pretrained(tmp_path / "ref")  # LM untouched: referenced, not copied
    ref = LlavaLite.from_pretrained(tmp_path / "ref")
    assert ref.lm_weights == "reference" and not (tmp_path / "ref" / "lm").exists()
    assert _same_logits(m.eval(), ref, b)

    m.lm = apply_lora(m.lm, LoraConfig(enabled=True, r=4, alpha=8, dropout=0.0), False)
    with torch.no_grad():  # make the adapter non-trivial so a lost adapter would show
        for n, p in m.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    m.save_pretrained(tmp_path / "lora")
    lora = LlavaLite.from_pretrained(tmp_path / "lora")
    assert lora.lm_weights == "lora" and (tmp_path / "lora" / "lm_adapter").is_dir()
    assert _same_logits(m.eval(), lora, b)
    assert not _same_logits(ref, lora, b)


def test_incomplete_directory_is_not_loadable(tmp_path):
    (tmp_path / "projector.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="llava_lite.json"):
        LlavaLite.from_pretrained(tmp_path)


def test_pixel_shuffle_merges_neighbouring_patches(tiny_lm):
    from llava_lite.model.vision import pixel_shuffle

    grid = torch.arange(4 * 4).float().reshape(1, 16, 1)  # patch k holds the value k, row-major 4x4
    out = pixel_shuffle(grid, (4, 4), 2)
    assert out.shape == (1, 4, 4)
    assert out[0, 0].tolist() == [0, 1, 4, 5] and out[0, 3].tolist() == [10, 11, 14, 15]
    cfg = ModelConfig(vision=VisionConfig(model="tiny", pretrained=None, pixel_shuffle=2), lm=str(tiny_lm))
    m = LlavaLite.build(cfg).eval()
    assert m.image_seq_len == 4 and m.vision.width == 4 * 64
    b = batch_for(m, convs())
    assert (b["input_ids"] == m.image_token_id).sum() == 3 * 4 and torch.isfinite(m(**inputs(b)).loss)
    with pytest.raises(ValueError, match="must divide"):
        LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None, pixel_shuffle=3),
                                    lm=str(tiny_lm)))


def test_vision_normalize_applies_the_final_layernorm():
    from llava_lite.model.vision import VisionTower

    tower = VisionTower(VisionConfig(model="tiny", pretrained=None, normalize=True))  # fresh LayerNorm: w=1, b=0
    feats = tower(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(feats.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats.std(-1, unbiased=False), torch.ones(2, 16), atol=1e-3, rtol=0)


def test_prompt_settings_are_saved_with_the_config(model, tmp_path):
    """render_mode and system_prompt are fields of the model's config, saved and loaded with it; a directory
    written before they were keeps them beside it ("mode", "system_prompt") and loads the same."""
    import json

    before = model.cfg.render_mode, model.cfg.system_prompt
    model.cfg.render_mode, model.cfg.system_prompt = "plain", "Be brief."
    try:
        model.save_pretrained(tmp_path / "m")
    finally:
        model.cfg.render_mode, model.cfg.system_prompt = before
    loaded = LlavaLite.from_pretrained(tmp_path / "m")
    assert (loaded.cfg.render_mode, loaded.cfg.system_prompt) == ("plain", "Be brief.")
    path = tmp_path / "m" / "llava_lite.json"
    meta = json.loads(path.read_text())
    assert meta["model"]["render_mode"] == "plain" and "mode" not in meta
    for older, expected in (({"mode": "plain", "system_prompt": "Old."}, ("plain", "Old.")), ({}, ("chat", None))):
        del meta["model"]["render_mode"], meta["model"]["system_prompt"]
        path.write_text(json.dumps({k: v for k, v in meta.items() if k not in ("mode", "system_prompt")} | older))
        old = LlavaLite.from_pretrained(tmp_path / "m")
        assert (old.cfg.render_mode, old.cfg.system_prompt) == expected
        meta["model"] |= {"render_mode": "chat", "system_prompt": None}


def test_random_llava_has_the_built_shapes_on_meta(model, tiny_lm):
    """model/random.py: the same tower and projector as LlavaLite.build, from configs alone, no memory."""
    from transformers import AutoConfig

    from llava_lite.model.random import random_llava

    meta = random_llava(model.cfg, AutoConfig.from_pretrained(tiny_lm), device="meta")
    assert all(p.is_meta for p in meta.parameters()) and meta.image_seq_len == model.image_seq_len
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes(meta.projector) == shapes(model.projector) and shapes(meta.vision) == shapes(model.vision)
