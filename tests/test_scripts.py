"""The two-stage launch scripts (scripts/*.sh, like LLaVA's scripts/v1_5/*.sh) run through
`accelerate launch` with tiny overrides: stage 1, stage 2 from it (full and LoRA), text SFT."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tiny import make_llava_data

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # `accelerate launch` subprocesses, one per script


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_llava_data(tmp_path_factory.mktemp("script_data"), n=8)


def run_script(name: str, *overrides: str) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", HF_HUB_OFFLINE="1")
    env.pop("ACCELERATE_CONFIG", None)
    done = subprocess.run(["bash", str(ROOT / "scripts" / f"{name}.sh"), *overrides], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"{name}.sh failed:\n{done.stderr[-3000:]}"


def test_each_script_trains_its_stage(tiny_lm, data, tmp_path):
    images = Path(data["captions"]).parent / "images"
    tiny = ["model.vision.model=tiny", "model.vision.pretrained=null", "model.dtype=float32", "data.num_workers=0",
            "data.chat_template=null", "data.max_length=128", "train.batch_size=4", "train.max_steps=2",
            "train.gradient_checkpointing=false"]
    s1, s2, lora, text = (tmp_path / n for n in ("s1", "s2", "lora", "text"))
    run_script("pretrain", *tiny, f"model.lm={tiny_lm}", f"train.output_dir={s1}",
               f"data.sources=[{{path: {data['captions']}, image_folder: {images}}}]")
    stage2_data = f"data.sources=[{{path: {data['conversations']}, image_folder: {images}}}]"
    run_script("finetune", *tiny, f"model.init_from={s1}", f"train.output_dir={s2}", stage2_data)
    run_script("finetune_lora", *tiny, f"model.init_from={s1}", f"train.output_dir={lora}", stage2_data,
               "lora.r=4", "lora.alpha=8")
    run_script("text_sft", *tiny, f"model.lm={tiny_lm}", f"train.output_dir={text}",
               f"data.sources=[{{path: {data['alpaca']}, format: alpaca}}]")
    stages = {}
    for out in (s1, s2, lora, text):
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(r["loss"] > 0 for r in rows), out.name
        stages[out.name] = json.loads((out / "train_summary.json").read_text())["stage"]
    assert stages == {"s1": "align", "s2": "instruct", "lora": "instruct", "text": "text"}
    assert json.loads((lora / "llava_lite.json").read_text())["lm_weights"] == "lora"
    assert json.loads((s2 / "llava_lite.json").read_text())["lm_weights"] == "full"
