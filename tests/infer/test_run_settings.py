"""Honest settings: init_from conflicts named before any model is built, preprocessing applied, dtypes
saved as trained, models placed on the requested device with an attention kernel that runs there."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.tiny import make_llava_data
from safetensors import safe_open

from llava_lite.cli import build_parser
from llava_lite.config import ConfigError, load_config
from llava_lite.model import lm
from llava_lite.model.llava import LlavaLite
from llava_lite.model.lm import pick_attention
from llava_lite.train.recipe import Trainer

CONFIGS = Path(__file__).parents[2] / "configs"


def args(tiny_lm, data, out, *extra):
    images = Path(data["captions"]).parent / "images"
    return [f"model.lm={tiny_lm}", "model.init_from=null", "data.chat_template=null", "model.vision.model=tiny",
            "model.vision.pretrained=null", "data.num_workers=0", "data.max_length=128", "train.batch_size=2",
            "train.max_steps=2", "train.gradient_checkpointing=false", f"train.output_dir={out}",
            f"data.sources=[{{path: {data['conversations']}, image_folder: {images}}}]", *extra]


@pytest.fixture(scope="module")
def stage1(tiny_lm, tmp_path_factory):
    """A bf16 stage-1 run directory."""
    root = tmp_path_factory.mktemp("s1")
    data = make_llava_data(root / "data", n=4)
    images = Path(data["captions"]).parent / "images"
    sources = f"data.sources=[{{path: {data['captions']}, image_folder: {images}}}]"
    cfg = load_config(CONFIGS / "stage1.yaml", args(tiny_lm, data, root / "run", "model.dtype=bfloat16", sources))
    Trainer(cfg).run()
    return root / "run", data


def test_init_from_conflicts_are_named_before_any_model_is_built(tiny_lm, stage1, tmp_path, monkeypatch):
    s1, data = stage1
    monkeypatch.setattr(LlavaLite, "build", lambda *a, **k: pytest.fail("a model was built"))
    monkeypatch.setattr(LlavaLite, "from_pretrained", lambda *a, **k: pytest.fail("a model was loaded"))
    cfg = load_config(CONFIGS / "stage2.yaml", args(tiny_lm, data, tmp_path / "o", f"model.init_from={s1}",
                                                    "model.vision.layer=-1", "model.projector=linear"))
    with pytest.raises(ConfigError) as e:
        Trainer(cfg).setup()
    message = str(e.value)
    assert "model.vision.layer=-1" in message and "model.projector='linear'" in message and "\n" not in message


def test_stage2_applies_pad_to_square_and_keeps_dtypes(tiny_lm, stage1, tmp_path):
    """pad_to_square is applied to the loaded tower (and recorded); the stage-1 projector arrives in
    fp32 exactly; a bf16 run saves its LM in bf16 (fp32 masters stay in the optimizer)."""
    s1, data = stage1
    with safe_open(str(s1 / "projector.safetensors"), "pt") as f:
        saved_projector = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    assert {v.dtype for v in saved_projector.values()} == {torch.float32}
    # model.vision.model / lm left at their defaults inherit the stage-1 directory's values
    cfg = load_config(CONFIGS / "stage2.yaml", [a for a in args(tiny_lm, data, tmp_path / "s2", f"model.init_from={s1}",
                                                                "model.vision.pad_to_square=true",
                                                                "model.dtype=bfloat16",
                                                                "train.lr=0", "train.max_steps=1")
                                                if not a.startswith(("model.vision.model", "model.lm"))])
    tr = Trainer(cfg)
    tr.setup()
    model = tr.acc.unwrap_model(tr.model)
    assert model.vision.cfg.pad_to_square and cfg.model.vision.model == "tiny"
    for k, v in model.projector.state_dict().items():
        assert torch.equal(v, saved_projector[k])  # not rounded through bf16
    tr.train()
    tr.finish()
    meta = json.loads((tmp_path / "s2" / "llava_lite.json").read_text())
    assert meta["model"]["vision"]["pad_to_square"] and meta["lm_weights"] == "full"
    assert json.loads((tmp_path / "s2" / "config.json").read_text())["model"]["lm"] == str(tiny_lm)
    (weights,) = (tmp_path / "s2" / "lm").glob("*.safetensors")
    with safe_open(str(weights), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118 (safe_open)
    loaded = LlavaLite.from_pretrained(tmp_path / "s2", device="cpu")
    assert next(loaded.projector.parameters()).dtype == torch.float32
    assert next(loaded.lm.parameters()).dtype == torch.bfloat16
    assert LlavaLite.from_pretrained(tmp_path / "s2", dtype="float32").lm.dtype == torch.float32


def test_flash_attention_only_for_a_cuda_resident_half_model(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(__import__("sys").modules, "flash_attn", object())
    assert pick_attention("auto", torch.bfloat16, "cuda") == "flash_attention_2"
    assert pick_attention("auto", torch.bfloat16, "cuda:1") == "flash_attention_2"
    assert pick_attention("auto", torch.bfloat16, "cpu") == "sdpa"  # a CPU-resident model on a GPU machine
    assert pick_attention("auto", torch.float32, "cuda") == "sdpa"
    assert pick_attention("auto", torch.bfloat16, None) == "flash_attention_2"  # training: accelerate places it
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        pick_attention("flash_attention_2", torch.bfloat16, "cpu")


def test_chat_eval_serve_take_device_and_dtype(monkeypatch):
    parser = build_parser()
    for command in (["chat", "--model", "m"], ["eval", "--model", "m"], ["serve", "--model", "m"]):
        ns = parser.parse_args(command + ["--device", "cpu", "--dtype", "bfloat16"])
        assert (ns.device, ns.dtype) == ("cpu", "bfloat16")
        assert parser.parse_args(command).device is None  # resolved by model.default_device()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from llava_lite.model.llava import default_device

    assert default_device() == "cpu"


def test_chat_loads_on_the_requested_device_and_dtype(monkeypatch):
    """cli_chat passes --device/--dtype to from_pretrained and to the assistant."""
    import llava_lite.infer.chat
    import llava_lite.infer.cli_chat as cli_chat

    seen = {}

    class Stop(Exception):
        pass

    def fake_from_pretrained(path, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(LlavaLite, "from_pretrained", staticmethod(fake_from_pretrained))
    monkeypatch.setattr(llava_lite.infer.chat, "Assistant", lambda *a, **k: None)
    monkeypatch.setattr("llava_lite.interop.sources.model_dir", lambda ref: ref)  # "m" stands for a model directory
    ns = build_parser().parse_args(["chat", "--model", "m", "--device", "cpu", "--dtype", "float16", "--prompt", "x"])
    with pytest.raises(Stop):
        cli_chat.run_chat(ns)
    assert seen == {"device": "cpu", "dtype": "float16"}
    assert lm.DTYPES["float16"] == torch.float16


def read_events(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TensorBoard event file (TFRecord framing: length, crc, Event proto, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, list[tuple[int, float]]] = {}
    data = path.read_bytes()
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        event = Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        for v in event.summary.value:
            out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_report_to_tensorboard_writes_events(tiny_lm, tmp_path):
    pytest.importorskip("tensorboardX")
    data = make_llava_data(tmp_path / "data", n=4)
    cfg = load_config(CONFIGS / "stage2.yaml", args(tiny_lm, data, tmp_path / "o", "model.dtype=float32",
                                                    "train.max_steps=3", "train.report_to=[tensorboard]"))
    Trainer(cfg).run()
    (events,) = (tmp_path / "o" / "logs").glob("events.out.tfevents.*")  # (hparams go to a subdirectory)
    scalars = read_events(events)
    rows = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)


def test_dry_run_counts_match_the_built_model_without_loading_weights(tiny_lm, monkeypatch, capsys):
    """--dry-run's counts per part equal what set_trainable reports on the real model (full, LoRA);
    it loads no weights; sharding divides what the engine shards."""
    import transformers

    from llava_lite.cli import main
    from llava_lite.train.build import build_model
    from llava_lite.train.dry_run import plan
    from llava_lite.train.stages import STAGES, set_trainable

    common = [f"model.lm={tiny_lm}", "model.init_from=null", "model.vision.model=tiny", "model.vision.pretrained=null",
              "data.chat_template=null", "model.dtype=bfloat16", "train.batch_size=2", "data.max_length=64"]
    expected = {}
    for name, extra in (("stage2.yaml", []), ("stage2_lora.yaml", ["lora.r=4", "lora.alpha=8"])):
        cfg = load_config(CONFIGS / name, common + extra)
        model = build_model(cfg, "chat")
        counts = set_trainable(model, STAGES["instruct"], log=lambda *_: None)
        expected[name] = {k: (v, sum(p.numel() for p in getattr(model, k.split()[0]).parameters()) - v)
                          for k, v in counts.items()}
    assert "lm (lora)" in expected["stage2_lora.yaml"]
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("--dry-run loaded weights"))
    for name, extra in (("stage2.yaml", []), ("stage2_lora.yaml", ["lora.r=4", "lora.alpha=8"])):
        cfg = load_config(CONFIGS / name, common + extra)
        assert plan(cfg).counts == expected[name]
    cfg = load_config(CONFIGS / "stage2.yaml", common)
    ddp, z2, z3 = plan(cfg, "ddp", 8), plan(cfg, "zero2", 8), plan(cfg, "zero3", 8)
    assert z3.memory["frozen weights"] == pytest.approx(ddp.memory["frozen weights"] / 8)
    assert z2.memory["AdamW state (fp32)"] == pytest.approx(ddp.memory["AdamW state (fp32)"] / 8)
    assert z2.memory["trainable weights (fp32)"] == ddp.memory["trainable weights (fp32)"]
    assert ddp.memory["AdamW state (fp32)"] == pytest.approx(2 * ddp.memory["gradients (fp32)"])
    # preference training: the reference (a bf16 copy of the LM and an fp32 projector; under LoRA the
    # projector only) and two rows per pair
    from llava_lite.train.dry_run import GIB

    n_lm, n_proj = expected["stage2.yaml"]["lm"][0], expected["stage2.yaml"]["projector"][0]
    dpo = plan(load_config(CONFIGS / "dpo.yaml", common))
    dpo_lora = plan(load_config(CONFIGS / "dpo.yaml", common + ["lora.enabled=true", "lora.r=4", "lora.alpha=8"]))
    assert "reference model" not in plan(cfg).memory
    assert dpo.memory["reference model"] * GIB == pytest.approx(n_lm * 2 + n_proj * 4)
    assert dpo_lora.memory["reference model"] * GIB == pytest.approx(n_proj * 4)
    assert dpo.memory["activations (rough)"] > plan(cfg).memory["activations (rough)"]
    capsys.readouterr()
    main(["train", str(CONFIGS / "stage1.yaml"), *common, "--dry-run", "--engine", "zero3", "--gpus", "8"])
    out = capsys.readouterr().out
    assert "zero3 on 8 GPU(s)" in out and "| projector | 8,320 | 0 |" in out and "| total |" in out


def test_gpu_check_runs_at_tiny_shapes_on_cpu(capsys):
    """scripts/gpu_check.sh's entry, at tiny shapes: both stages train, the table is printed."""
    import math

    from llava_lite.bench.gpu_check import main

    rows = main(["--device", "cpu", "--dtype", "float32", "--shapes", "tiny:align,tiny:instruct", "--batch-size", "2",
                 "--seq", "80", "--steps", "1", "--warmup", "1", "--peak-tflops", "1"])
    assert [(r["stage"], r["attn"]) for r in rows] == [("align", "sdpa"), ("instruct", "sdpa")]
    assert all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 and math.isfinite(r["loss"]) for r in rows)
    assert "| tiny | instruct | sdpa |" in capsys.readouterr().out


def test_stage1_micro_batch_truncated_away_still_steps(tiny_lm, tmp_path):
    """A stage-1 micro-batch whose only sample was truncated away has no image and no label: the
    empty image batch still gives it a graph, so backward runs and the step updates nothing."""
    data = make_llava_data(tmp_path / "data", n=4)
    recs = json.loads(Path(data["captions"]).read_text())
    recs += [{"id": f"long{i}", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\n" + "describe every pixel " * 40}, {"from": "gpt", "value": "Red."}]}
        for i in range(2)]
    Path(data["captions"]).write_text(json.dumps(recs))
    images = Path(data["captions"]).parent / "images"
    sources = f"data.sources=[{{path: {data['captions']}, image_folder: {images}}}]"
    cfg = load_config(CONFIGS / "stage1.yaml", args(tiny_lm, data, tmp_path / "o", "model.dtype=float32",
                                                    "data.mode=chat", "train.batch_size=1", "train.max_steps=6",
                                                    sources))
    Trainer(cfg).run()
    rows = [json.loads(line) for line in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_total"] == 2
    assert sorted(r["supervised_tokens"] == 0 for r in rows) == [False] * 4 + [True] * 2
