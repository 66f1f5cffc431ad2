"""transformers' own vision models as the tower (`model.vision.model: hf:<dir>`): CLIPVisionModel and
SiglipVisionModel made by transformers, features as the open_clip form gives them, save/load, export to
hf-llava, and a SigLIP llava-hf model made by transformers imported with its tower and answering as
transformers does."""
from __future__ import annotations

import pytest
import torch
from helpers.hf_towers import clip_tower, siglip_tower
from helpers.parity import TEXT_ONLY, build, hf_parity, noise, one_image_chat

from llava_lite.config import ConfigError, VisionConfig
from llava_lite.interop.hf_clip import write_open_clip_dir
from llava_lite.interop.hf_llava import write_hf_llava
from llava_lite.model.llava import LlavaLite
from llava_lite.model.vision import VisionTower


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_towers")
    return {"clip": clip_tower(root / "clip"), "siglip": siglip_tower(root / "siglip")}


def test_a_clip_vision_model_computes_what_its_open_clip_form_does(towers, tmp_path):
    from transformers import CLIPVisionModel

    hf = VisionTower(VisionConfig(model=f"hf:{towers['clip']}", pretrained=None, layer=-2, use_cls=True))
    model = CLIPVisionModel.from_pretrained(towers["clip"])
    ref = write_open_clip_dir(dict(model.state_dict()), model.config, hf.visual.preprocess_cfg, tmp_path / "oc")
    oc = VisionTower(VisionConfig(model=ref, pretrained=None, layer=-2, use_cls=True))
    image = noise(40, 30)
    assert torch.equal(hf.image_to_tensor(image), oc.image_to_tensor(image))  # the same preprocessing
    x = torch.randn(2, 3, 32, 32)
    assert hf.num_patches == oc.num_patches == 17
    torch.testing.assert_close(hf(x), oc(x), rtol=0, atol=1e-5)


def test_a_siglip_vision_model_has_no_cls_and_its_head_never_runs(towers):
    tower = VisionTower(VisionConfig(model=f"hf:{towers['siglip']}", pretrained=None, layer=0))
    called = []
    tower.visual.model.head.register_forward_hook(lambda *a: called.append(1))
    x = torch.randn(1, 3, 32, 32)
    out = tower.visual.model(pixel_values=x, output_hidden_states=True)
    torch.testing.assert_close(tower(x), out.hidden_states[1], rtol=0, atol=0)  # block 0's output, all 16 tokens
    called.clear()
    tower(x)
    assert not called and tower.num_patches == 16
    with pytest.raises(ConfigError, match="no single CLS token"):
        VisionTower(VisionConfig(model=f"hf:{towers['siglip']}", pretrained=None, use_cls=True))


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_save_load_and_hf_llava_export(tiny_lm, towers, tmp_path, kind):
    model = build(tiny_lm, model=f"hf:{towers[kind]}", pad_to_square=True)
    again = LlavaLite.from_pretrained(model.save_pretrained(tmp_path / "m")).eval()
    assert again.cfg.vision.model == f"hf:{tmp_path / 'm' / 'vision'}"  # the tower travels with the model
    ids = torch.tensor([[1] + [model.image_token_id] * model.image_seq_len + [2]])
    pixels = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(ids, None, pixels).logits, model(ids, None, pixels).logits, rtol=0, atol=0)
    write_hf_llava(again, tmp_path / "hf")
    worst = hf_parity(again, tmp_path / "hf", [one_image_chat(noise(40, 30)), TEXT_ONLY])
    print(f"\nhf:{kind} tower -> hf-llava: max |logit diff| {worst:.2e}")


def test_a_siglip_llava_hf_model_imports_with_its_tower(tiny_lm, towers, tmp_path, capsys, monkeypatch):
    """A llava-hf model with a SiglipVisionModel, as transformers writes one (here: our export of an hf: SigLIP
    model, whose parity with transformers is tested above), read back by chat as --model."""
    from llava_lite.cli import main
    from llava_lite.infer.chat import Assistant
    from llava_lite.interop.sources import model_dir

    monkeypatch.setenv("LLAVA_LITE_CACHE", str(tmp_path / "cache"))
    model = build(tiny_lm, model=f"hf:{towers['siglip']}", layer=-1)
    write_hf_llava(model, tmp_path / "hf")
    imported = LlavaLite.from_pretrained(model_dir(tmp_path / "hf")).eval()
    assert imported.vision.is_hf and not imported.vision.visual.has_cls and imported.cfg.vision.layer == -1
    image = noise(32, 32, 4)
    image.save(tmp_path / "x.png")
    capsys.readouterr()
    main(["chat", "--model", str(tmp_path / "hf"), "--image", str(tmp_path / "x.png"), "--prompt", "What is it?",
          "--max-new-tokens", "6", "--device", "cpu"])
    from llava_lite.data.conversation import Message

    expected = Assistant(model).reply([Message("user", "<image>\nWhat is it?")], [image], max_new_tokens=6)
    assert capsys.readouterr().out.strip() == expected.text.strip()
