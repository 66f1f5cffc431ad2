"""Two processes on CPU (gloo) give the run of one process with the same global batch; checkpoints
hold only what trains; the launch is checked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.runs import torchrun
from helpers.tiny import make_llava_data
from safetensors.torch import load_file

from llava_lite.config import ConfigError, load_config
from llava_lite.model.llava import LlavaLite
from llava_lite.train.distributed import check_launch, prepare_launch_env
from llava_lite.train.recipe import Trainer

ROOT = Path(__file__).parents[2]
CONFIGS = ROOT / "configs"


def overrides(tiny_lm, data, out, *extra):
    images = Path(data["conversations"]).parent / "images"
    return [f"model.lm={tiny_lm}", "model.init_from=null", "data.chat_template=null", "model.vision.model=tiny",
            "model.vision.pretrained=null", "model.dtype=float32", "data.num_workers=0", "data.max_length=128",
            "train.gradient_checkpointing=false", "train.lr=3e-3", "train.warmup_ratio=0",
            f"data.sources=[{{path: {data['conversations']}, image_folder: {images}}}]", f"train.output_dir={out}",
            *extra]


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def logits(model_dir, batch) -> torch.Tensor:
    model = LlavaLite.from_pretrained(model_dir, device="cpu")
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     pixel_values=batch["pixel_values"]).logits


@pytest.mark.slow  # torchrun subprocesses
def test_two_processes_equal_one_with_the_same_global_batch(tiny_lm, tmp_path):
    """Bare torchrun, 2 processes x batch 2 x accum 2 == 1 process x batch 2 x accum 4, per step and
    sample for sample; stage 2 with text-only and image micro-batches on different ranks at once."""
    data = make_llava_data(tmp_path / "data", n=16)  # 16 image + 8 text records: 12 batches of 2
    steps = ["train.batch_size=2", "train.max_steps=3", "train.save_every=2"]
    one = Trainer(load_config(CONFIGS / "stage2.yaml",
                              overrides(tiny_lm, data, tmp_path / "one", *steps, "train.grad_accum=4")))
    one.setup()
    batches = one.data.sampler.batches()
    convs = one.data.mixture.conversations
    image = [bool(convs[b[0]].images) for b in batches]
    # micro-batch i of a step: rank 0 takes batch 4k + 2i, rank 1 batch 4k + 2i + 1
    assert any(image[j] != image[j + 1] for j in range(0, 12, 2)), "no step mixes modalities across ranks"
    one.train()
    one.finish()

    proc = torchrun(2, [str(CONFIGS / "stage2.yaml"), *overrides(tiny_lm, data, tmp_path / "two", *steps,
                                                                 "train.grad_accum=2")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout + proc.stderr
    a, b = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["supervised_tokens"] for r in a] == [r["supervised_tokens"] for r in b]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    print("losses 1 vs 2 processes:", [(x["loss"], y["loss"]) for x, y in zip(a, b)])
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert (tmp_path / "two" / "checkpoints" / "step-0000002" / "random_states_1.pkl").is_file()  # both ranks' RNG
    batch = next(iter(one.data.loader))
    l1, l2 = logits(tmp_path / "one", batch), logits(tmp_path / "two", batch)
    print("max |logit difference| 1 vs 2 processes:", float((l1 - l2).abs().max()))
    torch.testing.assert_close(l2, l1, rtol=1e-4, atol=1e-5)
    # the 2-process checkpoint of step 2 resumes on 1 process (accum 4) into the same step 3
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "two" / "checkpoints" / "step-0000002", resumed / "checkpoints" / "step-0000002")
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in b[:2]))
    Trainer(load_config(CONFIGS / "stage2.yaml", overrides(tiny_lm, data, resumed, *steps, "train.grad_accum=4")),
            resume=True).run()
    assert [r["loss"] for r in rows(resumed)] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    assert rows(resumed)[-1]["supervised_tokens"] == a[-1]["supervised_tokens"]


@pytest.mark.slow  # torchrun subprocesses
def test_stage1_two_processes_equal_one_and_checkpoint_only_the_projector(tiny_lm, tmp_path):
    """Stage 1 under bare torchrun: 2 x batch 2 == 1 x batch 2 x accum 2; a DDP checkpoint holds the projector only."""
    data = make_llava_data(tmp_path / "data", n=8)
    images = Path(data["captions"]).parent / "images"
    extra = ["train.batch_size=2", "train.max_steps=2", "train.lr=1e-2",
             f"data.sources=[{{path: {data['captions']}, image_folder: {images}}}]"]
    one = Trainer(load_config(CONFIGS / "stage1.yaml", overrides(tiny_lm, data, tmp_path / "one", *extra,
                                                                 "train.grad_accum=2")))
    one.run()
    proc = torchrun(2, [str(CONFIGS / "stage1.yaml"), *overrides(tiny_lm, data, tmp_path / "two", *extra)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["loss"] for r in rows(tmp_path / "two")] == pytest.approx([r["loss"] for r in rows(tmp_path / "one")],
                                                                        rel=1e-4)
    saved = load_file(str(tmp_path / "two" / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert saved and all(k.startswith("projector.") for k in saved)
    batch = next(iter(one.data.loader))
    torch.testing.assert_close(logits(tmp_path / "two", batch), logits(tmp_path / "one", batch), rtol=1e-4, atol=1e-5)


def test_stage1_checkpoint_holds_only_the_projector(tiny_lm, tmp_path):
    """A stage-1 checkpoint stores the projector (and optimizer / RNG state), never the frozen LM or
    ViT; a resumed run loads it and goes on as if never interrupted."""
    data = make_llava_data(tmp_path / "data", n=8)
    images = Path(data["captions"]).parent / "images"
    cfg = lambda out, *x: load_config(CONFIGS / "stage1.yaml", overrides(
        tiny_lm, data, out, "train.batch_size=2", "train.max_steps=4", "train.save_every=2",
        f"data.sources=[{{path: {data['captions']}, image_folder: {images}}}]", *x))
    full = Trainer(cfg(tmp_path / "a"))
    full.run()
    ckpt = tmp_path / "a" / "checkpoints" / "step-0000002"
    saved = load_file(str(ckpt / "model.safetensors"))
    model = full.acc.unwrap_model(full.model)
    assert set(saved) == {f"projector.{k}" for k in model.projector.state_dict()}
    # resume from step 2 == uninterrupted
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpt, b / "checkpoints" / "step-0000002")
    (b / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(tmp_path / "a")[:2]))
    Trainer(cfg(b), resume=True).run()
    assert [r["loss"] for r in rows(b)] == [r["loss"] for r in rows(tmp_path / "a")]


def test_launch_is_checked(monkeypatch):
    class Acc:
        num_processes = 1

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "")  # recorded, so the value set below is undone after the test
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    prepare_launch_env()
    assert os.environ["ACCELERATE_USE_CPU"] == "true"
    with pytest.raises(ConfigError, match="launcher started 2 processes.*accelerate sees 1"):
        check_launch(Acc())
    Acc.num_processes = 2
    check_launch(Acc())


def torchrun_worker(script: str, tiny_lm, tmp_path, **env) -> dict:
    """Run tests/train/<script> on 2 torchrun processes (one thread each, offline); its result.json."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "train" / script), str(tiny_lm), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((tmp_path / "result.json").read_text())


@pytest.mark.slow  # torchrun subprocesses
def test_fsdp2_mixed_modalities_gathered_save(tiny_lm, tmp_path):
    """torch's FSDP2 on gloo (accelerate enables FSDP only on GPUs), sharded as fsdp2.yaml shards,
    stage 2 and stage 1; in stage 2 rank 0 text-only while rank 1 has images, and the other way; no collective
    mismatch (without
    the empty image batch this run dies in gloo), the same losses as the unsharded model on the
    global batch, a gathered state dict equal to it, and a saved directory with its logits."""
    results = torchrun_worker("fsdp2_worker.py", tiny_lm, tmp_path, TOKENIZERS_PARALLELISM="false")
    for stage, lm_weights in (("instruct", "full"), ("align", "reference")):
        result = results[stage]
        for sharded, reference in result["losses"]:
            assert sharded == pytest.approx(reference, rel=1e-4)
        assert result["state_diff"] < 1e-4 and result["logit_diff"] < 1e-4 and result["lm_weights"] == lm_weights
        # the checkpoint (gathered, trained tensors only) restores a fresh sharded model exactly
        assert result["ckpt_parts"] == (["lm", "projector"] if stage == "instruct" else ["projector"])
        assert result["reload_diff"] == 0


@pytest.mark.slow  # torchrun subprocesses
def test_deepspeed_zero3_mixed_modalities_accumulation_clipping_and_gathered_save(tiny_lm, tmp_path):
    """DeepSpeed ZeRO-3 on its CPU accelerator, driven directly (accelerate cannot drive DeepSpeed
    without a GPU: it sees one process). Rank 0 text-only while rank 1 has images (the vision tower is
    one ZeRO-3 leaf, run on zero images), 2 micro-batches accumulated by the engine into one step,
    clipping at 0.05 honoured: the same weights as the unsharded model stepped by hand, and the
    gathered 16-bit state dict saves to a directory with the same logits."""
    pytest.importorskip("deepspeed")
    r = torchrun_worker("zero3_worker.py", tiny_lm, tmp_path, DS_ACCELERATOR="cpu")
    assert r["steps"] == 1 and r["missing"] == []
    assert r["engine_norm"] == pytest.approx(r["ref_norm"], rel=1e-4) and r["ref_norm"] > 0.05 * 10  # clipping bites
    assert r["state_diff"] < 1e-5 and r["logit_diff"] < 1e-4
    # its checkpoint leaves the frozen tower out (exclude_frozen_parameters) and loads back exactly
    assert r["reload_diff"] == 0 and r["bytes_all"] - r["bytes_excluded"] > 117_760 * 4  # the tiny ViT in fp32


def test_deepspeed_config_is_filled_from_train():
    """The shipped zero configs say "auto": the trainer fills micro-batch, accumulation and clipping."""
    import yaml

    from llava_lite.train.distributed import fill_deepspeed_config

    for name in ("zero2.yaml", "zero3.yaml"):
        shipped = yaml.safe_load((CONFIGS / "accelerate" / name).read_text())["deepspeed_config"]
        assert shipped["gradient_accumulation_steps"] == "auto" and shipped["gradient_clipping"] == "auto"

    class Plugin:
        deepspeed_config = {"gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}

    class Acc:
        num_processes = 8
        state = type("S", (), {"deepspeed_plugin": Plugin()})()

    fill_deepspeed_config(Acc(), batch_size=4, grad_accum=3, max_grad_norm=0.5)
    assert Plugin.deepspeed_config == {"gradient_accumulation_steps": 3, "gradient_clipping": 0.5,
                                       "train_micro_batch_size_per_gpu": 4, "train_batch_size": 96}


def test_lora_checkpoint_holds_only_adapters_and_projector(tiny_lm, tmp_path):
    data = make_llava_data(tmp_path / "data", n=4)
    cfg = load_config(CONFIGS / "stage2_lora.yaml", overrides(tiny_lm, data, tmp_path / "o", "train.batch_size=2",
                                                              "train.max_steps=2", "lora.r=4", "lora.alpha=8"))
    Trainer(cfg).run()
    saved = load_file(str(tmp_path / "o" / "checkpoints" / "step-0000002" / "model.safetensors"))
    assert any("lora_A" in k for k in saved) and any(k.startswith("projector.") for k in saved)
    assert all("lora_" in k or k.startswith("projector.") for k in saved), sorted(saved)[:5]
