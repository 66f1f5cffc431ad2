"""SigLIP-family towers: open_clip's timm-backed image towers (no CLS token, an attention-pool head) as the
frozen tower, on a tiny one built locally (tests/helpers/siglip.py): features from the chosen block with the
pool never run, training, save/load and chat."""
from __future__ import annotations

import pytest
import torch
from helpers.parity import noise
from helpers.runs import CONFIGS, base, losses, source
from helpers.siglip import tiny_siglip_dir
from helpers.tiny import make_llava_data

from llava_lite.cli import main
from llava_lite.config import AnyresConfig, ConfigError, ModelConfig, VisionConfig
from llava_lite.infer.chat import Assistant
from llava_lite.model.llava import LlavaLite
from llava_lite.model.vision import VisionTower


@pytest.fixture(scope="module")
def tower_ref(tmp_path_factory):
    return tiny_siglip_dir(tmp_path_factory.mktemp("siglip"))


def test_features_come_from_the_chosen_block_and_the_pool_never_runs(tower_ref):
    tower = VisionTower(VisionConfig(model=tower_ref, pretrained=None, layer=-2))
    trunk = tower.trunk
    assert trunk is not None and tower.width == 64 and tower.num_patches == 16  # 4 x 4 patches, no CLS
    pooled = []
    trunk.attn_pool.register_forward_hook(lambda *a: pooled.append(1))
    x = torch.randn(2, 3, 32, 32)
    feats = tower(x)
    with torch.no_grad():  # the same blocks by hand: patches + positions, then blocks 0 and 1 of 3
        h = trunk.norm_pre(trunk._pos_embed(trunk.patch_embed(x)))
        for block in trunk.blocks[:2]:
            h = block(h)
    torch.testing.assert_close(feats, h, rtol=0, atol=0)
    assert not pooled and not any(p.requires_grad for p in tower.parameters())
    shuffled = VisionTower(VisionConfig(model=tower_ref, pretrained=None, layer=-2, pixel_shuffle=2))
    assert shuffled.num_patches == 4 and shuffled.width == 256


def test_use_cls_is_refused(tower_ref):
    with pytest.raises(ConfigError, match="no single CLS token"):
        VisionTower(VisionConfig(model=tower_ref, pretrained=None, use_cls=True))


def test_save_load_is_exact_and_chat_answers(tiny_lm, tower_ref, tmp_path):
    torch.manual_seed(0)
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model=tower_ref, pretrained=None), lm=str(tiny_lm))).eval()
    again = LlavaLite.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    assert (tmp_path / "m" / "vision" / "open_clip_model.safetensors").is_file()  # the tower travels with the model
    ids = torch.tensor([[1] + [model.image_token_id] * model.image_seq_len + [2, 3]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, None, pixels).logits, model(ids, None, pixels).logits, rtol=0, atol=0)
    from llava_lite.data.conversation import Message

    image = noise(48, 40)
    reply = Assistant(again).reply([Message("user", "<image>\nWhat is it?")], [image], max_new_tokens=5)
    assert reply.completion_tokens > 0


@pytest.mark.slow  # a short stage-2 run
def test_stage2_trains_with_a_siglip_tower(tiny_lm, tower_ref, tmp_path):
    data = make_llava_data(tmp_path / "data", n=16)
    out = tmp_path / "s2"
    main(["train", str(CONFIGS / "stage2.yaml"), *base(tiny_lm, out, source(data["conversations"]),
                                                       f"model.vision.model={tower_ref}", "train.max_steps=8",
                                                       "train.lr=3e-3", "train.warmup_ratio=0")])
    curve = losses(out)
    assert len(curve) == 8 and curve[-1] < curve[0], curve
    assert LlavaLite.from_pretrained(out).vision.trunk is not None


@pytest.mark.parametrize("vision", [dict(layer=-2), dict(layer=0, pad_to_square=True),
                                    dict(layer=-2, anyres=AnyresConfig(max_tiles=4))])
def test_hf_llava_export_holds_it_as_siglip_vision_model(tiny_lm, tower_ref, tmp_path, vision):
    """The export writes a `siglip_vision_model` vision config (no head, every token kept: "full") and
    transformers' LlavaForConditionalGeneration (AnyRes: LlavaNextForConditionalGeneration) reproduces
    llava-lite: same ids and pixels, logits within 1e-4, the same greedy tokens."""
    import json

    from helpers.parity import TEXT_ONLY, build, hf_parity, one_image_chat, two_turn_chat

    from llava_lite.interop.hf_llava import write_hf_llava

    model = build(tiny_lm, model=tower_ref, **vision)
    write_hf_llava(model, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vision_config"]["model_type"] == "siglip_vision_model"
    assert config["vision_feature_select_strategy"] == "full" and config["image_seq_length"] == 16
    chats = [one_image_chat(noise(40, 30)), two_turn_chat(noise(30, 47, 1), noise(64, 64, 2)), TEXT_ONLY]
    worst = hf_parity(model, tmp_path / "hf", chats)
    print(f"\nSigLIP tower -> hf-llava {vision}: max |logit diff| {worst:.2e}")
