"""The demo's base-model pre-training on a tiny world: CLIP and LM save/load, markers, held-out."""
from __future__ import annotations

import copy
import json
import os
from importlib.resources import as_file, files
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from llava_lite.config import ConfigError, load_config
from llava_lite.demo.clip_pretrain import evaluate_clip, normalize, pretrain_clip
from llava_lite.demo.corpus import world_documents
from llava_lite.demo.lm_pretrain import answer_argmax, answers_right, mean_loss, pack, reading_questions
from llava_lite.demo.presets import MARKER, PRESETS, resolve
from llava_lite.demo.pretrain import build_base, build_world, pretrain_lm, train_tokenizer
from llava_lite.demo.run import _data, _mixture
from llava_lite.demo.world import HELDOUT_PAIRS

TINY = {
    "seed": 0,
    "short_per_type": 2,
    "mixture": {"long": 0.1, "short": 1.0, "text": 0.25},
    "world": {"n_train": 16, "n_test": 8, "image_size": 64},
    "text_tasks": {"n_train": 24, "n_test": 8},
    "tokenizer": {"vocab_size": 400},
    "clip": {"vision": {"width": 32, "layers": 2, "heads": 2, "patch_size": 8},
             "text": {"width": 32, "layers": 1, "heads": 2, "context_length": 64},
             "embed_dim": 16, "batch_size": 8, "steps": 2, "lr": 1e-3, "weight_decay": 0.1, "warmup": 0.1,
             "patch_loss_weight": 1.0},
    "lm": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
           "intermediate_size": 64, "max_position_embeddings": 128,
           "seq_len": 64, "batch_size": 2, "steps": 3, "lr": 1e-3, "weight_decay": 0.0, "warmup": 0.1},
}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("base")
    build_world(root / "world", TINY)
    train_tokenizer(root / "world", root / "tokenizer", TINY)
    return root


def test_presets_resolve_and_are_complete():
    for name in ("fast", "full"):
        p = resolve(name)
        assert set(p) == set(TINY) and set(p["clip"]) == set(TINY["clip"])
        assert set(p["lm"]) - {"lookup"} == set(TINY["lm"])  # lm.lookup: the optional curriculum
        assert set(p["mixture"]) == {"long", "short", "text"} and p["mixture"]["short"]
        p["lm"]["steps"] = -1  # a private copy
        assert PRESETS[name]["lm"]["steps"] > 0
    smol = resolve("smol")  # the full preset's world and CLIP, a pretrained LM instead of tokenizer and LM
    assert set(smol) == set(TINY) - {"tokenizer"} and smol["clip"] == PRESETS["full"]["clip"]
    assert smol["lm"] == {"pretrained": "smollm2"} and smol["world"]["n_test"] < PRESETS["full"]["world"]["n_test"]
    with pytest.raises(ValueError):
        resolve("huge")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_stage2_yaml_holds_the_presets_mixture(name):
    """`llava-lite train <preset>_stage2.yaml` after a demo in runs/demo trains on what the demo trained on: the
    sources the YAML ships equal those the demo builds from the preset's mixture (they are written twice)."""
    demo = Path("runs/demo")
    data = {"instruct_train": demo / "data/instruct_train.json", "short_train": demo / "data/short_train.json",
            "text_train": demo / "world/text_tasks/train.json"}
    with as_file(files("llava_lite.demo") / "configs" / f"{name}_stage2.yaml") as path:
        shipped = load_config(path).data.sources
        built = load_config(path, [f"data.sources={_mixture(data, demo / 'world/images', PRESETS[name]['mixture'])}"])
    assert built.data.sources == shipped


def test_clip_local_dir_round_trip_and_marker(base):
    out = base / "clip"
    info = pretrain_clip(base / "world", out, TINY)
    assert (out / MARKER).is_file() and (out / "open_clip_model.safetensors").is_file()
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["preprocess_cfg"]["image_size"] == 64 and cfg["model_cfg"]["vision_cfg"]["patch_size"] == 8
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + str(out))
    model.eval()
    # identical weights, hence identical features
    saved = load_file(str(out / "open_clip_model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    ref = open_clip.CLIP(**cfg["model_cfg"]).eval()
    ref.load_state_dict(saved)
    img = Image.open(base / "world" / "images" / "test" / "000001.png").convert("RGB")
    x = preprocess(img).unsqueeze(0)
    u8 = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None]
    assert torch.allclose(x, normalize(u8), atol=1e-5)  # training used the same preprocessing
    a = model.visual.forward_intermediates(x, indices=[-2], output_fmt="NLC", intermediates_only=True)
    b = ref.visual.forward_intermediates(x, indices=[-2], output_fmt="NLC", intermediates_only=True)
    assert a["image_intermediates"][0].shape == (1, 64, 32)
    assert torch.equal(a["image_intermediates"][0], b["image_intermediates"][0])
    tok = open_clip.get_tokenizer("local-dir:" + str(out))  # offline: SimpleTokenizer's vocab ships with open_clip
    assert torch.equal(model.encode_text(tok(["a red circle."])), ref.encode_text(tok(["a red circle."])))
    # the metrics recorded at training time are reproduced by the reloaded model
    assert evaluate_clip(model, base / "world") == info["metrics"]
    assert {"object_color", "object_shape", "patch_shape_map", "patch_position",
            "retrieval_r1_of_100"} <= set(info["metrics"])
    # skip when done; redo when the config changes
    mtime = os.stat(out / "open_clip_model.safetensors").st_mtime_ns
    assert pretrain_clip(base / "world", out, TINY) == info
    assert os.stat(out / "open_clip_model.safetensors").st_mtime_ns == mtime
    changed = copy.deepcopy(TINY)
    changed["clip"]["steps"] = 3  # more than one pass over the 16 images
    assert pretrain_clip(base / "world", out, changed)["steps"] == 3


def test_lm_save_load_and_marker(base):
    out = base / "lm"
    info = pretrain_lm(base / "world", base / "tokenizer", out, TINY)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(tok) and model.config.tie_word_embeddings
    assert tok.chat_template and tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    rows = pack(world_documents(base / "world", "test", 1), tok, 64, 0)[:32]
    assert abs(mean_loss(model, rows) - info["metrics"]["heldout_world_loss"]) < 1e-3
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] <= ids.shape[1] + 3
    mtime = os.stat(out / "model.safetensors").st_mtime_ns
    assert pretrain_lm(base / "world", base / "tokenizer", out, TINY) == info
    assert os.stat(out / "model.safetensors").st_mtime_ns == mtime
    (out / MARKER).unlink()  # an unfinished run (no marker) is redone
    assert pretrain_lm(base / "world", base / "tokenizer", out, TINY)["metrics"] == info["metrics"]


def test_lm_init_seed_shifts_the_initialisation_only(base, tmp_path):
    """`llava-lite demo --lm-seed N` (preset lm.init_seed): another initial LM on the same corpus, under its own
    cache key; 0 is the preset's own LM."""
    info = pretrain_lm(base / "world", base / "tokenizer", base / "lm", TINY)  # reused if built above
    weights = load_file(str(base / "lm" / "model.safetensors"))
    for init_seed, same in ((0, True), (1, False)):
        seeded = copy.deepcopy(TINY)
        seeded["lm"]["init_seed"] = init_seed
        other = pretrain_lm(base / "world", base / "tokenizer", tmp_path / str(init_seed), seeded)
        theirs = load_file(str(tmp_path / str(init_seed) / "model.safetensors"))
        assert all(torch.equal(weights[k], theirs[k]) for k in weights) == same, init_seed
        assert other["corpus_tokens"] == info["corpus_tokens"] and other["fingerprint"] != info["fingerprint"]


def test_lm_lookup_curriculum_trains_on_lookup_documents_first(base, tmp_path, monkeypatch):
    """lm.lookup {per_image, steps}: the first `steps` batches come from the lookup documents, the rest from the
    world's text, under the LM's own cache key; steps outside 1..lm.steps is refused before training."""
    import llava_lite.demo.lm_pretrain as lp

    curriculum = copy.deepcopy(TINY)
    curriculum["lm"]["lookup"] = {"per_image": 2, "steps": 2}
    seen, forward = [], LlamaForCausalLM.forward

    def spy(self, input_ids=None, labels=None, **kw):  # the training batches, in order
        if self.training:
            seen.append(input_ids.clone())
        return forward(self, input_ids=input_ids, labels=labels, **kw)

    monkeypatch.setattr(LlamaForCausalLM, "forward", spy)
    info = pretrain_lm(base / "world", base / "tokenizer", tmp_path / "lm", curriculum)
    tok = AutoTokenizer.from_pretrained(base / "tokenizer")
    lookup = pack(lp.lookup_documents(base / "world", 2, 0), tok, 64, 0)
    world = pack(world_documents(base / "world", "train", 0) + lp.text_task_documents(base / "world", "train"),
                 tok, 64, 0)

    def rows(t):
        return {tuple(r.tolist()) for r in t}

    assert len(seen) == 3 and all(rows(x) <= rows(lookup) for x in seen[:2]) and rows(seen[2]) <= rows(world)
    assert info["fingerprint"] != pretrain_lm(base / "world", base / "tokenizer", base / "lm", TINY)["fingerprint"]
    curriculum["lm"]["lookup"]["steps"] = 4
    with pytest.raises(ConfigError, match="lm.lookup.steps 4 must be in 1..lm.steps"):
        pretrain_lm(base / "world", base / "tokenizer", tmp_path / "bad", curriculum)


def test_base_json_names_the_preset(base, tmp_path):
    """base.json's "preset": the name handed in beside a preset dict (run_demo's, with its seeds), else "custom"."""
    import shutil

    for part in ("world", "tokenizer"):
        shutil.copytree(base / part, tmp_path / part)
    for name, want in (("tiny", "tiny"), (None, "custom")):
        assert build_base(tmp_path, TINY, name=name)["preset"] == want
        assert json.loads((tmp_path / "base.json").read_text())["preset"] == want


def test_caption_reading_asks_stage_twos_questions_and_scores_greedy_answers(base):
    """The LM's reading check (base.json): the questions are the VQA test set's, with the image's captions or the
    next image's in place of the image; scoring in padded batches gives each row's own greedy tokens."""
    world = json.loads((base / "world" / "world.json").read_text())
    vqa = [json.loads(line) for line in _data(base, TINY, world)["vqa"].read_text().splitlines()]
    rows = reading_questions(base / "world", n=3, seed=TINY["seed"])
    scenes = json.loads((base / "world" / "annotations" / "captions_test.json").read_text())["annotations"]
    caps = {i: [a["caption"] for a in scenes if a["image_id"] == i] for i in (1, 2)}
    assert [(r["answer"], r["type"]) for r in rows] == [(q["answer"], q["category"]) for q in vqa[:len(rows)]]
    first = [r for r, q in zip(rows, vqa) if q["image"].endswith("000001.png")]
    assert first and all(q["text"] in r["own"] and q["text"] in r["other"] for r, q in zip(rows, vqa))
    assert all(" ".join(caps[1]) in r["own"] and " ".join(caps[2]) in r["other"] for r in first)
    pretrain_lm(base / "world", base / "tokenizer", base / "lm", TINY)  # reused if the test above built it
    model, tok = AutoModelForCausalLM.from_pretrained(base / "lm"), AutoTokenizer.from_pretrained(base / "lm")
    prompts, answers = [r["own"] for r in rows], [r["answer"] for r in rows]
    batched = answer_argmax(model, tok, prompts, answers, batch=8)
    for p, a, (got, wanted) in zip(prompts, answers, batched):  # one row alone, the whole vocabulary head
        ids = tok(p, add_special_tokens=False)["input_ids"]
        ans = tok(a + "<|im_end|>", add_special_tokens=False)["input_ids"]
        assert wanted == ans
        logits = model(input_ids=torch.tensor([ids + ans])).logits[0]
        assert got == logits[len(ids) - 1:-1].argmax(-1).tolist()

    class Shifted(torch.nn.Module):  # "predicts" the input token `shift` places on: 1 reads the answer itself
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def get_decoder(self):
            return lambda input_ids: type("Out", (), {"last_hidden_state": torch.nn.functional.one_hot(
                input_ids.roll(-self.shift, 1), len(tok)).float()})

        def get_output_embeddings(self):
            return torch.nn.Identity()

    assert all(answers_right(Shifted(1), tok, prompts, answers))
    assert not any(answers_right(Shifted(0), tok, prompts, answers)) and not any(
        answers_right(Shifted(2), tok, prompts, answers))


def test_pretraining_refuses_heldout_pairs(base, tmp_path):
    import shutil

    world = tmp_path / "world"
    shutil.copytree(base / "world", world)
    path = world / "annotations" / "instances_train.json"
    inst = json.loads(path.read_text())
    color, shape = HELDOUT_PAIRS[0]
    inst["annotations"][0]["color"] = color
    inst["annotations"][0]["category_id"] = next(c["id"] for c in inst["categories"] if c["name"] == shape)
    path.write_text(json.dumps(inst))
    with pytest.raises(AssertionError, match="held-out"):
        pretrain_clip(world, tmp_path / "clip", TINY)
    with pytest.raises(AssertionError, match="held-out"):
        pretrain_lm(world, base / "tokenizer", tmp_path / "lm", TINY)


def test_demo_data_step_on_the_tiny_world(base):
    """The demo's data step (llava_lite/demo/run.py; the whole demo runs only in the slow end-to-end test):
    training and held-out instructions, VQA questions, general text, written once and then reused; the
    training text never names a held-out colour-shape pair."""
    world = json.loads((base / "world" / "world.json").read_text())
    paths = _data(base, TINY, world)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    rows = [json.loads(line) for line in paths["vqa"].read_text().splitlines()]
    assert rows and all({"question_id", "image", "text", "answer", "category", "unseen_combo"} <= set(r) for r in rows)
    assert [r["question_id"] for r in rows] == list(range(len(rows)))
    inst = json.loads((base / "world" / "annotations" / "instances_test.json").read_text())
    names = {c["id"]: c["name"] for c in inst["categories"]}
    held = {im["file_name"]: [a for a in inst["annotations"] if a["image_id"] == im["id"]] for im in inst["images"]}
    for r in rows:  # colour and shape questions say how many colours (shapes) their image holds; the others nothing
        kind = {"color": lambda a: a["color"], "shape": lambda a: names[a["category_id"]]}.get(r["category"])
        assert r.get("choices_in_image") == (len({kind(a) for a in held[r["image"]]}) if kind else None)
    assert {r["category"] for r in rows if r.get("choices_in_image", 0) > 1} == {"color", "shape"}
    train_text = (paths["instruct_train"].read_text() + paths["short_train"].read_text()).lower()
    assert not [f"{c} {s}" for c, s in world["heldout_pairs"] if f"{c} {s}" in train_text]
    mtime = paths["vqa"].stat().st_mtime_ns
    assert _data(base, TINY, world) == paths and paths["vqa"].stat().st_mtime_ns == mtime
    turns = lambda: sum(len(r["conversations"]) for r in json.loads(paths["short_train"].read_text()))
    two = turns()
    assert _data(base, {**TINY, "short_per_type": 1}, world) == paths and turns() < two  # new settings: made again
