"""GGUF export options beside the main parity tests (test_gguf_export.py): what is refused (one line, before any
weight loads and before anything is written), other feature layers and the normalised features, and the
note on how llama.cpp preprocesses non-square images."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.llama_cpp import image_features, load
from helpers.parity import noise
from helpers.tiny import make_tokenizer
from transformers import LlamaConfig

from llava_lite.cli import main
from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.interop.export import write_gguf
from llava_lite.model.llava import LlavaLite
from llava_lite.model.random import random_lm


def mlp_bias_lm(out):
    tok = make_tokenizer("chatml")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, mlp_bias=True)
    random_lm(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("change, says", [
    ({"projector": "linear"}, "projector='linear'"),
    ({"vision": {"use_cls": True}}, "use_cls"),
    ({"vision": {"pixel_shuffle": 2}}, "pixel_shuffle=2"),
    ({"render_mode": "plain"}, "render_mode 'plain'"),
    ({"lm": "mlp_bias"}, "mlp_bias=True"),
])
def test_what_cannot_export_is_refused(tiny_lm, tmp_path, capsys, change, says):
    vision = VisionConfig(model="tiny", pretrained=None, **change.pop("vision", {}))
    lm = mlp_bias_lm(tmp_path / "lm") if change.pop("lm", None) else tiny_lm
    LlavaLite.build(ModelConfig(vision=vision, lm=str(lm), **change)).save_pretrained(tmp_path / "m")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["export", str(tmp_path / "m"), str(tmp_path / "out"), "--format", "gguf"])
    err = capsys.readouterr().err.strip().splitlines()
    # one line, and no "Loading weights" progress before it: refused before the model loads
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("vision", [dict(layer=0), dict(layer=-1, normalize=True)])
def test_other_feature_layers_and_normalised_features(tiny_lm, tmp_path, vision):
    """vision.layer names how many blocks llama.cpp runs (feature_layer = blocks written); normalize=True
    features pass the final LayerNorm, written as post_ln."""
    torch.manual_seed(0)
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None, **vision),
                                        lm=str(tiny_lm))).eval()
    llm = load(*write_gguf(model, tmp_path, "f32"))
    try:
        image = noise(32, 32, 5)
        with torch.no_grad():
            ours = model.encode_images(model.vision.image_to_tensor(image)[None]).numpy()
        worst = float(np.abs(image_features(llm, image) - ours).max())
    finally:
        llm.close()
    assert worst < 2e-3, worst


@pytest.mark.parametrize("pad", [False, True])
def test_export_says_when_llama_cpp_preprocesses_differently(tiny_lm, tmp_path, caplog, pad):
    """llama.cpp pads every non-square image to square; a model that centre-crops them is told so at export."""
    torch.manual_seed(0)
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None, pad_to_square=pad),
                                        lm=str(tiny_lm))).eval()
    write_gguf(model, tmp_path, "f32")
    assert ("centre-crops non-square images" in caplog.text) != pad
