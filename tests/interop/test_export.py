"""Export to transformers' llava-hf layout: same logits and greedy tokens in LlavaForConditionalGeneration,
refusals for what HF Llava cannot hold, LoRA merging."""
from __future__ import annotations

import argparse
import json
import types

import pytest
import torch
from helpers.parity import TEXT_ONLY, TOL, build, hf_parity, noise, one_image_chat, two_turn_chat

from llava_lite.config import VisionConfig
from llava_lite.infer.chat import Assistant
from llava_lite.interop.export import add_parser, export, main, run
from llava_lite.interop.hf_llava import check_exportable, write_hf_llava
from llava_lite.model.llava import LlavaLite
from llava_lite.model.vision import TINY_DIR, VisionTower


def tower_dir(tmp_path, name: str, **vision_cfg) -> str:
    """The tiny open_clip config with some vision_cfg / model_cfg / preprocess_cfg options changed."""
    cfg = json.loads((TINY_DIR / "open_clip_config.json").read_text())
    for key, value in vision_cfg.items():
        if key == "quick_gelu":
            cfg["model_cfg"]["quick_gelu"] = value
        elif key == "resize_mode":
            cfg["preprocess_cfg"]["resize_mode"] = value
        else:
            cfg["model_cfg"]["vision_cfg"][key] = value
    (tmp_path / name).mkdir()
    (tmp_path / name / "open_clip_config.json").write_text(json.dumps(cfg))
    return f"local-dir:{tmp_path / name}"


@pytest.mark.parametrize("case", [
    dict(use_cls=False, layer=-2, projector="mlp2x_gelu"),
    dict(use_cls=True, layer=-1, projector="linear"),
    dict(use_cls=False, layer=0, projector="linear", pad_to_square=True, system_prompt="Answer briefly."),
    dict(use_cls=True, layer=-2, projector="mlp2x_gelu", pad_to_square=True, quick_gelu=True),
])
def test_hf_llava_parity(tiny_lm, tmp_path, case, caplog):
    case = dict(case)
    system, quick = case.pop("system_prompt", None), case.pop("quick_gelu", False)
    tower = tower_dir(tmp_path, "qg", quick_gelu=True) if quick else "tiny"
    model = build(tiny_lm, model=tower, **case)
    model.cfg.system_prompt = system
    assert (type(model.vision.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU") == quick
    write_hf_llava(model, tmp_path / "hf")
    assert ("vLLM does not" in caplog.text) == (case["projector"] == "linear")  # said once, at export time
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["vision_feature_layer"] == {-2: -2, -1: -1, 0: 1}[case["layer"]]
    assert config["vision_feature_select_strategy"] == ("full" if case["use_cls"] else "default")
    # 40x30 -> 42x32, 30x47 -> 32x50: even crop margins; padded images are square before the resize
    chats = [one_image_chat(noise(40, 30)), two_turn_chat(noise(30, 47, 1), noise(64, 64, 2)), TEXT_ONLY]
    worst = hf_parity(model, tmp_path / "hf", chats)
    print(f"max |logit diff| {case} quick_gelu={quick}: {worst:.2e}")


def test_cli_export_and_default_backend(tiny_lm, tmp_path):
    """`export MODEL_DIR OUT`: the default (torchvision) image backend is exact when no resize is needed."""
    model = build(tiny_lm, seed=3)
    model.save_pretrained(tmp_path / "m")
    main([str(tmp_path / "m"), str(tmp_path / "hf")])
    assert (tmp_path / "hf" / "generation_config.json").is_file()
    chats = [one_image_chat(noise(32, 32, 5)), two_turn_chat(noise(32, 32, 6), noise(32, 32, 7))]
    hf_parity(LlavaLite.from_pretrained(tmp_path / "m"), tmp_path / "hf", chats, backend=None)
    with pytest.raises(FileExistsError):
        main([str(tmp_path / "m"), str(tmp_path / "hf")])
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())  # how cli.py mounts it
    args = parser.parse_args(["export", "m", "out", "--format", "llava-lite", "--merge-lora"])
    assert (args.model_dir, args.out, args.fmt, args.merge_lora, args.func) == ("m", "out", "llava-lite", True, run)


def test_plain_mode_template(tiny_lm, tmp_path):
    """A stage-1 model (render_mode plain) exports a template that is bos + one <image> per image."""
    model = build(tiny_lm, seed=4)
    model.cfg.render_mode = "plain"
    write_hf_llava(model, tmp_path / "hf")
    hf_parity(model, tmp_path / "hf", [one_image_chat(noise(40, 30, 8))])


@pytest.mark.parametrize("option,match", [
    (dict(pixel_shuffle=2), "pixel_shuffle"),
    (dict(normalize=True), "normalize"),
    (dict(projector="mlp3x_gelu"), "mlp3x_gelu"),
    (dict(tower=dict(ls_init_value=0.1)), "layer scale"),
    (dict(tower=dict(attentional_pool=True, attn_pooler_heads=2, attn_pooler_queries=4)), "attention pooling"),
    (dict(tower=dict(no_ln_pre=True)), "no_ln_pre"),
    (dict(tower=dict(qk_norm=True)), "custom attention block"),
    (dict(tower=dict(resize_mode="longest")), "resize_mode"),
])
def test_refusals(tiny_lm, tmp_path, option, match):
    model = build(tiny_lm)
    vision = VisionConfig(model="tiny", pretrained=None, pixel_shuffle=option.get("pixel_shuffle", 1),
                          normalize=option.get("normalize", False))
    if "tower" in option:
        vision.model = tower_dir(tmp_path, "t", **option["tower"])
    candidate = types.SimpleNamespace(vision=VisionTower(vision), lm=model.lm, tokenizer=model.tokenizer,
                                      cfg=types.SimpleNamespace(projector=option.get("projector", "mlp2x_gelu")))
    with pytest.raises(ValueError, match=match):
        check_exportable(candidate)


def test_refusal_through_export_writes_nothing(tiny_lm, tmp_path):
    build(tiny_lm, pixel_shuffle=2).save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="pixel_shuffle"):
        export(tmp_path / "m", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_lora_is_merged(tiny_lm, tmp_path):
    from peft import LoraConfig, get_peft_model

    model = build(tiny_lm, seed=5)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    model.lm = get_peft_model(model.lm, lora)
    with torch.no_grad():  # a non-trivial adapter, so that a lost one would show
        for name, p in model.lm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "lora")
    adapted = LlavaLite.from_pretrained(tmp_path / "lora")
    assert adapted.lm_weights == "lora"
    export(tmp_path / "lora", tmp_path / "hf", "hf-llava")
    hf_parity(adapted, tmp_path / "hf", [one_image_chat(noise(40, 30, 9))])

    main([str(tmp_path / "lora"), str(tmp_path / "merged"), "--format", "llava-lite", "--merge-lora"])
    merged = LlavaLite.from_pretrained(tmp_path / "merged")
    assert merged.lm_weights == "full" and (tmp_path / "merged" / "lm").is_dir()
    assert not (tmp_path / "merged" / "lm_adapter").exists()
    ids, pixels, _ = Assistant(adapted).encode(*one_image_chat(noise(40, 30, 9))[1:])
    with torch.no_grad():
        diff = (merged(ids, None, pixels).logits - adapted(ids, None, pixels).logits).abs().max()
    assert diff < TOL
