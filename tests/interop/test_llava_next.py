"""AnyRes as LLaVA-NeXT: the geometry against transformers' own functions, and an AnyRes model exported to
LlavaNextForConditionalGeneration + LlavaNextProcessor (and imported back) with parity on several aspect ratios."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.parity import TEXT_ONLY, build, hf_parity, noise, one_image_chat, two_turn_chat

from llava_lite.config import AnyresConfig, ConfigError
from llava_lite.infer.chat import Assistant
from llava_lite.interop.hf_import import import_hf_llava
from llava_lite.interop.hf_llava import write_hf_llava
from llava_lite.model.anyres import Anyres, fitted_size
from llava_lite.model.llava import LlavaLite

# (height, width); (85, 272) fitted into 32 x 96: 85 * (96 / 272) is 30.000000000000004, 85 * 96 / 272 is 30,
# so the resized height is 31 as transformers computes it (and 30 the other way); (25, 200) likewise at 9 tiles
SIZES = [(30, 100), (100, 30), (64, 64), (33, 47), (200, 61), (20, 20), (97, 96), (85, 272), (272, 85), (25, 200)]


@pytest.mark.parametrize("cfg", [AnyresConfig(max_tiles=4), AnyresConfig(max_tiles=9),
                                 AnyresConfig(grid_pinpoints=[[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]])])
def test_geometry_is_transformers(cfg):
    """Best resolution, tiles per image, tokens per image (the processor's count) and the packed features
    (LlavaNextModel.pack_image_features) are transformers' own, for every size."""
    from transformers import LlavaNextConfig, LlavaNextModel, LlavaNextProcessor
    from transformers.image_processing_utils import get_patch_output_size, select_best_resolution
    from transformers.image_utils import ChannelDimension
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    layout = Anyres(cfg, base=32, grid=(4, 4))
    points = [list(p) for p in layout.pinpoints]
    processor = LlavaNextProcessor.__new__(LlavaNextProcessor)  # its token count needs only these
    processor.patch_size, processor.num_additional_image_tokens = 8, 0
    processor.image_processor = type("P", (), {"image_grid_pinpoints": points})()
    config = LlavaNextConfig(image_grid_pinpoints=points, vision_config={"image_size": 32, "patch_size": 8,
                                                                         "model_type": "clip_vision_model"})
    for size in SIZES:
        assert [p * 32 for p in layout.tile_grid(size)] == list(select_best_resolution(size, points))
        target = select_best_resolution(size, points)
        assert fitted_size(size, target) == get_patch_output_size(np.zeros((3, *size)), target, ChannelDimension.FIRST)
        assert layout.num_tiles(size) == image_size_to_num_patches(size, points, 32)
        assert layout.num_tokens(size) == processor._get_number_of_features(*size, 32, 32)
        feats, newline = torch.randn(layout.num_tiles(size), 16, 6), torch.randn(6)
        [theirs], _ = LlavaNextModel.pack_image_features(
            type("M", (), {"config": config})(), [feats], torch.tensor([size]), "full", newline)
        torch.testing.assert_close(layout.pack(feats, size, newline), theirs, rtol=0, atol=0)
    assert layout.max_tokens() == max(layout.num_tokens((h, w)) for h, w in layout.pinpoints)


def test_bad_settings_are_one_line(tiny_lm):
    with pytest.raises(ConfigError, match="multiples of the tower's input size 32"):
        build(tiny_lm, anyres=AnyresConfig(grid_pinpoints=[[32, 48]]))
    with pytest.raises(ConfigError, match="use_cls"):
        build(tiny_lm, anyres=AnyresConfig(), use_cls=True)
    with pytest.raises(ConfigError, match="max_tiles"):
        build(tiny_lm, anyres=AnyresConfig(max_tiles=0))


@pytest.fixture(scope="module")
def model(tiny_lm):
    m = build(tiny_lm, seed=3, anyres=AnyresConfig(max_tiles=4))
    with torch.no_grad():  # a visible newline and projector, so a misplaced token shows in the logits
        for p in m.projector.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return m


CHATS = [one_image_chat(noise(64, 32)), one_image_chat(noise(32, 80, 1)), one_image_chat(noise(70, 70, 2)),
         two_turn_chat(noise(100, 33, 3), noise(20, 30, 4)), TEXT_ONLY]  # wide, tall, square, two at once


def test_export_to_llava_next_has_parity(model, tmp_path):
    """Ids, pixels (each image's tiles) and image sizes as LlavaNextProcessor makes them; logits within 1e-4 of
    LlavaNextForConditionalGeneration's and the same greedy tokens, on wide, tall and square images."""
    import json

    out = write_hf_llava(model, tmp_path / "hf")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_next" and config["image_grid_pinpoints"] == [
        list(p) for p in model.vision.anyres.pinpoints]
    worst = hf_parity(model, out, CHATS)
    print(f"LLaVA-NeXT export: largest logit difference {worst:.2e}")


def test_llava_next_imports_back_exactly(model, tmp_path):
    back = LlavaLite.from_pretrained(import_hf_llava(write_hf_llava(model, tmp_path / "hf"), tmp_path / "back"))
    assert back.cfg.vision.anyres.grid_pinpoints == [list(p) for p in model.vision.anyres.pinpoints]
    ours, theirs = Assistant(model), Assistant(back)
    for _, messages, images in CHATS:
        a, b = ours.encode(messages, images), theirs.encode(messages, images)
        assert a[0].tolist() == b[0].tolist()
        with torch.no_grad():
            la = model(a[0], pixel_values=a[1], image_sizes=a[2]).logits
            lb = back(b[0], pixel_values=b[1], image_sizes=b[2]).logits
        torch.testing.assert_close(la, lb, rtol=0, atol=1e-6)


def test_gguf_refuses_anyres(model):
    from llava_lite.errors import FormatError
    from llava_lite.interop.gguf_mmproj import check_config

    with pytest.raises(FormatError, match="anyres"):
        check_config(model.cfg)
