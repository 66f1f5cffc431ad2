"""Import from transformers' llava-hf layout, from LLaVA's own `llava_llama` directories and its stage-1
`mm_projector.bin`, and the round trip export -> import: same logits as the source."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.hf_llava import make_hf_llava
from helpers.parity import TOL, build, noise, one_image_chat, two_turn_chat
from helpers.tiny import make_llava_data, make_llava_llama, make_tokenizer

from llava_lite.cli import main
from llava_lite.config import ConfigError, ModelConfig, VisionConfig, load_config
from llava_lite.errors import ModelLoadError
from llava_lite.infer.chat import Assistant
from llava_lite.interop.hf_import import load_llava_projector
from llava_lite.interop.hf_llava import write_hf_llava
from llava_lite.interop.sources import detect, import_dir, load, resolve
from llava_lite.model.llava import LlavaLite
from llava_lite.model.vision import VisionTower

# llava-1.5-hf style: typed content only (a string content renders as nothing)
TYPED_ONLY = ("{% for m in messages %}{{ m['role'].upper() }}: "
              "{% for c in m['content'] | selectattr('type', 'equalto', 'image') %}<image>\n{% endfor %}"
              "{% for c in m['content'] | selectattr('type', 'equalto', 'text') %}{{ c['text'] }} {% endfor %}"
              "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


@pytest.mark.parametrize("act,layer,strategy,pad,projector_act", [
    ("gelu", -2, "default", False, "gelu"),
    ("quick_gelu", 1, "full", True, "gelu"),
    ("quick_gelu", -1, "default", True, "linear"),
])
def test_import_hf_llava(tmp_path, act, layer, strategy, pad, projector_act):
    from transformers import AutoProcessor

    hf = make_hf_llava(tmp_path / "hf", act, layer, strategy, pad, projector_act)
    assert detect(tmp_path / "hf") == "hf-llava"
    import_dir(tmp_path / "hf", tmp_path / "lite")
    model = LlavaLite.from_pretrained(tmp_path / "lite")
    assert model.vision.cfg.layer == (layer - 1 if layer > 0 else layer)
    assert model.vision.cfg.use_cls == (strategy == "full") and model.vision.cfg.pad_to_square == pad
    assert model.cfg.projector == ("linear" if projector_act == "linear" else "mlp2x_gelu")
    processor, assistant, worst = AutoProcessor.from_pretrained(tmp_path / "hf", backend="pil"), Assistant(model), 0.0
    for _, ours, images in (one_image_chat(noise(40, 30)), two_turn_chat(noise(30, 47, 1), noise(64, 64, 2))):
        plain = [{"role": m.role, "content": m.content} for m in ours]  # CHATML takes string content
        inputs = processor(images=images, text=processor.apply_chat_template(plain, add_generation_prompt=True),
                           return_tensors="pt")
        ids, pixels, _ = assistant.encode(ours, images)
        assert inputs["input_ids"].tolist() == ids.tolist()
        torch.testing.assert_close(inputs["pixel_values"], pixels, atol=1e-6, rtol=0)
        with torch.no_grad():
            diff = float((hf(**inputs).logits - model(ids, None, pixels).logits).abs().max())
        worst = max(worst, diff)
    print(f"max |logit diff| import hf-llava {act} layer={layer} {strategy} pad={pad} {projector_act}: {worst:.2e}")
    assert worst < TOL


def test_typed_only_template_needs_a_choice(tmp_path):
    make_hf_llava(tmp_path / "hf", "gelu", -2, "default", False, template=TYPED_ONLY)
    with pytest.raises(ModelLoadError, match="chat_template="):
        import_dir(tmp_path / "hf", tmp_path / "lite")
    import_dir(tmp_path / "hf", tmp_path / "lite2", chat_template="chatml")
    assert "<|im_start|>" in LlavaLite.from_pretrained(tmp_path / "lite2").tokenizer.chat_template


@pytest.mark.parametrize("weights", ["safetensors", "bin"])
def test_import_llava_llama(tmp_path, weights):
    tower = VisionTower(VisionConfig(model="tiny", pretrained=None))
    tower_ref = tower.save_local(tmp_path / "tower")  # the offline stand-in for the OpenAI CLIP
    lm, projector = make_llava_llama(tmp_path / "llava", tower_ref, weights)
    assert detect(tmp_path / "llava") == "llava-llama"
    with pytest.raises(ModelLoadError, match="mm_vision_tower"):  # an unknown tower name needs an override
        cfg = json.loads((tmp_path / "llava" / "config.json").read_text())
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "config.json").write_text(json.dumps(cfg | {"mm_vision_tower": "my/tower"}))
        import_dir(tmp_path / "other", tmp_path / "x")
    import_dir(tmp_path / "llava", tmp_path / "lite", vision_tower=tower_ref)
    model = LlavaLite.from_pretrained(tmp_path / "lite")
    assert model.vision.cfg.pad_to_square and not model.vision.cfg.use_cls and model.vision.cfg.layer == -2
    assert "ASSISTANT:" in model.tokenizer.chat_template  # vicuna_v1, LLaVA-1.5's conversation mode

    # the reference by hand: the same Llama, tower and projector put together by llava-lite itself
    lm.save_pretrained(tmp_path / "ref_lm")
    make_tokenizer("chatml").save_pretrained(tmp_path / "ref_lm")
    ref = LlavaLite.build(ModelConfig(vision=VisionConfig(model=tower_ref, pretrained=None, pad_to_square=True),
                                      lm=str(tmp_path / "ref_lm"), projector="mlp2x_gelu")).eval()
    ref.projector.load_state_dict(projector)
    assert ref.image_token_id == model.image_token_id
    ids, pixels, _ = Assistant(model).encode(*two_turn_chat(noise(40, 30), noise(30, 47, 1))[1:])
    with torch.no_grad():
        diff = float((ref(ids, None, pixels).logits - model(ids, None, pixels).logits).abs().max())
    print(f"max |logit diff| import llava_llama ({weights}): {diff:.2e}")
    assert diff < TOL


def test_mm_projector_bin(tiny_lm, tmp_path):
    model = build(tiny_lm)
    state = {f"model.mm_projector.{k}": torch.randn_like(v) for k, v in model.projector.state_dict().items()}
    torch.save(state, tmp_path / "mm_projector.bin")
    assert detect(tmp_path / "mm_projector.bin") == "mm-projector"
    load_llava_projector(model, tmp_path)  # the stage-1 output directory or the file itself
    for k, v in model.projector.state_dict().items():
        assert torch.equal(v, state[f"model.mm_projector.{k}"])
    linear = {"model.mm_projector.weight": torch.randn(64, 64), "model.mm_projector.bias": torch.randn(64)}
    torch.save(linear, tmp_path / "linear.bin")
    with pytest.raises(ModelLoadError, match="do not fit projector='mlp2x_gelu'"):
        load_llava_projector(model, tmp_path / "linear.bin")
    with pytest.raises(ModelLoadError, match="load_llava_projector"):
        import_dir(tmp_path / "mm_projector.bin", tmp_path / "x")


@pytest.mark.parametrize("vision", [dict(use_cls=True, layer=-1, pad_to_square=True), dict(layer=0)])
def test_round_trip(tiny_lm, tmp_path, vision):
    projector = "linear" if vision.get("use_cls") else "mlp2x_gelu"
    model = build(tiny_lm, seed=7, projector=projector, **vision)
    model.cfg.system_prompt = "Be brief." if vision.get("use_cls") else None
    write_hf_llava(model, tmp_path / "hf")
    import_dir(tmp_path / "hf", tmp_path / "lite")
    assert detect(tmp_path / "lite") == "llava-lite"
    back = LlavaLite.from_pretrained(tmp_path / "lite")
    assert back.cfg.projector == projector and back.vision.cfg.layer == model.vision.cfg.layer
    assert back.vision.cfg.use_cls == model.vision.cfg.use_cls
    assert back.vision.cfg.pad_to_square == model.vision.cfg.pad_to_square
    chat = two_turn_chat(noise(40, 30), noise(30, 47, 1))[1:]
    ids, pixels, _ = Assistant(model).encode(*chat)
    ids_back, pixels_back, _ = Assistant(back).encode(*chat)  # the system prompt now lives in the template
    assert ids.tolist() == ids_back.tolist() and torch.equal(pixels, pixels_back)
    with torch.no_grad():
        diff = float((back(ids, None, pixels).logits - model(ids, None, pixels).logits).abs().max())
    print(f"max |logit diff| round trip {vision}: {diff:.2e}")
    assert diff < TOL


# ---- model.init_from in the three layouts: stage 2 trains 2 steps from each ------------------------------

CONFIGS = Path(__file__).parents[2] / "configs"


def stage2(out, data, *extra) -> list[str]:
    """configs/stage2.yaml on tiny data, 2 steps."""
    images = Path(data["conversations"]).parent / "images"
    return [str(CONFIGS / "stage2.yaml"), f"train.output_dir={out}", "model.dtype=float32", "data.num_workers=0",
            "data.max_length=128", "train.batch_size=4", "train.max_steps=2", "train.gradient_checkpointing=false",
            f"data.sources=[{{path: {data['conversations']}, image_folder: {images}}}]", *extra]


def trained(out) -> LlavaLite:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows), rows
    return LlavaLite.from_pretrained(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_llava_data(tmp_path_factory.mktemp("data"), n=8)


def test_init_from_hf_llava(tmp_path, data, monkeypatch):
    make_hf_llava(tmp_path / "hf", "gelu", -2, "default", False)
    main(["train", *stage2(tmp_path / "run", data, f"model.init_from={tmp_path / 'hf'}", "data.chat_template=null")])
    model = trained(tmp_path / "run")
    assert model.lm_weights == "full" and "<|im_start|>" in model.tokenizer.chat_template
    (imported,) = (tmp_path / "run" / "imported").iterdir()  # imported once, beside the run
    assert imported.name.startswith("hf-") and (imported / "llava_lite.json").is_file()
    monkeypatch.setattr("llava_lite.interop.sources.import_source", lambda *a, **k: pytest.fail("imported twice"))
    args = stage2(tmp_path / "run", data, f"model.init_from={tmp_path / 'hf'}", "data.chat_template=null")
    cfg = load_config(args[0], args[1:])
    assert resolve(cfg).kind == "hf-llava"
    assert load(resolve(cfg), cfg).image_seq_len == 16  # a second run (or --resume) reuses the import


def test_init_from_llava_llama(tmp_path, data):
    tower = VisionTower(VisionConfig(model="tiny", pretrained=None)).save_local(tmp_path / "tower")
    make_llava_llama(tmp_path / "llava", tower)
    # model.vision names the tower in place of mm_vision_tower (here: a local stand-in for the OpenAI CLIP)
    main(["train", *stage2(tmp_path / "run", data, f"model.init_from={tmp_path / 'llava'}",
                           f"model.vision.model={tower}", "model.vision.pretrained=null")])
    model = trained(tmp_path / "run")
    assert "ASSISTANT:" in model.tokenizer.chat_template and model.vision.cfg.pad_to_square  # vicuna_v1, "pad"


def test_init_from_mm_projector(tiny_lm, tmp_path, data):
    """LLaVA's released stage-1 directory (config.json + mm_projector.bin, no LM weights) with the base LM
    and tower named in the config: the projector is loaded exactly, then stage 2 trains."""
    from llava_lite.train.build import build_model

    ref = build(tiny_lm)
    state = {f"model.mm_projector.{k}": torch.randn_like(v) for k, v in ref.projector.state_dict().items()}
    (tmp_path / "pretrain").mkdir()
    torch.save(state, tmp_path / "pretrain" / "mm_projector.bin")
    config = {"model_type": "llava_llama", "mm_vision_tower": "x"}
    (tmp_path / "pretrain" / "config.json").write_text(json.dumps(config))
    assert detect(tmp_path / "pretrain") == "mm-projector"
    args = stage2(tmp_path / "run", data, f"model.init_from={tmp_path / 'pretrain'}", f"model.lm={tiny_lm}",
                  "model.vision.model=tiny", "model.vision.pretrained=null", "data.chat_template=null")
    model = build_model(load_config(args[0], args[1:]), "chat")
    for k, v in model.projector.state_dict().items():
        assert torch.equal(v, state[f"model.mm_projector.{k}"])
    main(["train", *args])
    trained(tmp_path / "run")
    with pytest.raises(ConfigError, match="set model.lm"):
        resolve(load_config(args[0], [a for a in args[1:] if not a.startswith("model.lm=")]))


def test_init_from_unknown_layout(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    for path in (tmp_path / "other", tmp_path / "missing"):
        with pytest.raises(ConfigError) as e:
            resolve(load_config(None, [f"model.init_from={path}"]))
        message = str(e.value)
        assert f"model.init_from={str(path)!r}" in message and "\n" not in message
        assert all(s in message for s in ("llava-hf", "llava_llama", "mm_projector.bin"))


@pytest.mark.parametrize("key, value", [("mm_use_im_start_end", True), ("image_aspect_ratio", "anyres")])
def test_unsupported_init_from_is_one_line(tmp_path, data, capsys, key, value):
    """`llava-lite train` from a llava_llama directory llava-lite cannot represent: one line, exit 2."""
    tower = VisionTower(VisionConfig(model="tiny", pretrained=None)).save_local(tmp_path / "tower")
    make_llava_llama(tmp_path / "llava", tower)
    config = json.loads((tmp_path / "llava" / "config.json").read_text()) | {key: value}
    (tmp_path / "llava" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SystemExit) as e:
        main(["train", *stage2(tmp_path / "run", data, f"model.init_from={tmp_path / 'llava'}",
                               f"model.vision.model={tower}")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("error: ") == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"error: {tmp_path / 'llava'}: {key}={value!r}"), err
