"""`llava-lite bench` (llava_lite/bench*.py): it runs and reports, both sides start from the same
weights, the ablation's LM heads compute the same loss; stage 1 computes no LM weight gradient."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.runs import CONFIGS, base, source
from helpers.tiny import make_llava_data

import llava_lite.bench.run as bench_run
import llava_lite.bench.setup as bench_setup
from llava_lite.bench.run import BASELINE, main
from llava_lite.bench.setup import SHAPES, DataMix, build_llava_lite, make_samples, write_vit_config
from llava_lite.bench.worker import head_forward, trl_collate
from llava_lite.config import load_config
from llava_lite.data.dataset import Collator
from llava_lite.train.recipe import Trainer


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    shape = SHAPES["micro"]
    ref = write_vit_config(shape, tmp_path_factory.mktemp("vit"))
    model = build_llava_lite(shape, ref)
    samples = make_samples(DataMix(n=6, text_fraction=0.3), model.image_seq_len, shape["image"], shape["vocab"])
    return shape, ref, model, samples


@pytest.mark.slow  # each side's worker is a subprocess
def test_bench_runs_two_steps_and_reports(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = main(["--shape", "micro", "--steps", "2", "--warmup", "1", "--rounds", "1", "--json", str(out),
                   "--anyres", "4"])
    anyres = next(name for name in result["rows"] if "AnyRes" in name)
    assert set(result["rows"]) == {BASELINE, "llava-lite", "llava-lite + packing", anyres}
    # micro: a 32 px tower, 4 x 4 patches; a 64 px image is 2 x 2 tiles: 16 + 8 rows x (8 + 1) tokens, 5 crops
    assert anyres == "+ AnyRes (88 tokens, 5 crops/image)", anyres
    for row in result["rows"].values():
        assert set(row) == {"samples_per_s", "samples_per_cpu_s", "tokens_per_s", "padding", "peak_mb", "warmup_s",
                            "step_s",
                            "model_tflops_per_s", "of_gemm", "tokens_per_s_limit"}
        assert row["samples_per_s"] > 0 and 0 <= row["padding"] < 1
    rows = result["rows"]
    assert rows["llava-lite + packing"]["padding"] < rows["llava-lite"]["padding"] < rows[BASELINE]["padding"]
    assert set(result["ratios"]) == {"llava-lite", "llava-lite + packing"}
    assert set(result["levers"]) == {anyres}  # against llava-lite reading each image as one crop
    assert result["gemm_flops"] > 0 and json.loads(out.read_text())["rows"].keys() == rows.keys()
    printed = capsys.readouterr().out
    assert "matmul limit" in printed and f"llava-lite / {BASELINE}: samples/s" in printed


def test_bench_driver_with_canned_workers(monkeypatch, tmp_path, capsys):
    """The driver of `llava-lite bench` without its subprocesses (the slow test above runs them): each side's
    worker result is canned, so the rounds, the medians, the model FLOPs, the ratios to the baseline and the
    JSON file are checked in about a second."""
    specs = []

    def worker(spec):
        specs.append(spec)
        sps = 2.0 if spec["side"] == "hf" else 4.0 if spec.get("packing") else 3.0
        return {"samples_per_s": sps, "samples_per_cpu_s": sps / 2, "tokens_per_s": 100 * sps, "padding": 0.1,
                "peak_mb": 10 * sps, "warmup_s": 0.1, "step_s": 1 / sps}

    monkeypatch.setattr(bench_run, "run_worker", worker)
    monkeypatch.setattr(bench_setup, "gemm_flops", lambda **kw: 1e9)
    out = tmp_path / "bench.json"
    result = main(["--shape", "micro", "--steps", "2", "--warmup", "1", "--rounds", "2", "--json", str(out)])
    assert len(specs) == 6 and [s["side"] for s in specs[:3]] == ["hf", "lite", "lite"]  # 2 rounds x 3 sides
    assert [s["side"] for s in specs[3:]] == ["lite", "lite", "hf"]  # the sides alternate
    assert result["ratios"]["llava-lite"]["samples_per_s"] == pytest.approx(1.5)
    assert result["ratios"]["llava-lite + packing"]["peak_memory"] == pytest.approx(2.0)
    row = result["rows"]["llava-lite"]
    assert row["model_tflops_per_s"] > 0 and row["of_gemm"] == pytest.approx(row["model_tflops_per_s"] * 1e3)
    assert json.loads(out.read_text())["rows"].keys() == result["rows"].keys()
    assert f"llava-lite / {BASELINE}: samples/s 1.50x" in capsys.readouterr().out


def test_both_sides_start_from_the_same_weights(micro):
    """The baseline is the llava-lite model converted to LlavaForConditionalGeneration: same loss on
    the same padded batch, before any step."""
    from transformers import LlavaForConditionalGeneration

    from llava_lite.interop.hf_llava import llava_config, llava_state

    shape, ref, model, samples = micro
    again = build_llava_lite(shape, ref)  # another process builds the very same weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    config = llava_config(model)
    hf = LlavaForConditionalGeneration(config)
    hf.load_state_dict(llava_state(model, config))
    batch = trl_collate(samples, model.tokenizer.pad_token_id)
    assert batch["pixel_values"] is not None and batch["pixel_values"].shape[0] < len(samples)  # mixed batch
    with torch.no_grad():
        ours = model.eval()(**batch).loss
        theirs = hf.eval()(**batch).loss
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["full", "chunked"])
def test_ablation_heads_give_the_sparse_loss_and_gradients(micro, mode):
    shape, ref, _, samples = micro
    batch = Collator(0)([s for s in samples if s.pixel_values is not None])
    batch.pop("num_skipped")
    results = []
    for variant in (None, mode):
        model = build_llava_lite(shape, ref).train()
        if variant:
            model.forward = head_forward(model, variant, chunk=7)  # several chunks
        out = model(**batch)
        out.loss_sum.backward()
        results.append((out.loss_sum.detach(), model.lm.lm_head.weight.grad, model.projector[0].weight.grad))
    (a, *ga), (b, *gb) = results
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6)


def test_stage1_computes_no_lm_weight_gradients(tiny_lm, tmp_path):
    """Stage 1 (align): after a step, no LM parameter holds a gradient (none was computed or
    stored: they do not require one), while the projector has its gradients."""
    data = make_llava_data(tmp_path / "data", n=8)
    cfg = load_config(CONFIGS / "stage1.yaml", base(tiny_lm, tmp_path / "s1", source(data["captions"]),
                                                    "train.max_steps=1"))
    tr = Trainer(cfg)
    tr.setup()
    seen = {}
    real = tr.optimizer.step

    def capture(*a, **k):
        model = tr.acc.unwrap_model(tr.model)
        seen["lm"] = [n for n, p in model.lm.named_parameters() if p.grad is not None or p.requires_grad]
        seen["projector"] = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in model.projector.parameters()]
        return real(*a, **k)

    tr.optimizer.step = capture
    tr.train()
    assert seen["lm"] == []
    assert seen["projector"] and all(seen["projector"])
