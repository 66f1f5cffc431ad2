"""The full demo as `make demo` runs it, from nothing, with floors on what it learns (~30 min on two
cores: world, tokenizer, CLIP and LM pre-training, both stages, evaluation).

Every other test stays green when the demo model stops reading its images; this one does not. The
floors sit below every measured run of the recipe: stage 2 with its long records from epoch 1 on (a
weight schedule) and `kl_to_base: 0.1` gave 87.4%, 87.8% and 77.3% VQA with the base LM initialised from
seeds +0, +1 and +2 on a 2-core EPYC (2026-12-07; 82.7% on +2 with a lighter variant: 900 steps, the long
records at 0.1), and 82.5% and 82.7% on seeds +0 and +2 built on a 2-core Intel Xeon with AMX, whose rounding
draws other base LMs (2026-12-08). The recipe before it (every source from the start, 700 steps) gave 82.2%,
81.2% and 76.5% over stage seeds and 73.2% and 73.4% over LM seeds (the EPYC); 38.0% to 40.6% when each
question is asked about another image (answer priors). The LM's initialisation, which a different CPU's
rounding perturbs like a new seed, is the widest swing (10.5 points with the schedule, 9.0 before it), so the
VQA floor leaves 9 points below the lowest run; a model that stops reading the image loses about 40.
"""
from __future__ import annotations

import json

import pytest

from llava_lite.cli import main
from llava_lite.model.lm import cpu_bf16_native

# Where the CPU has no native bf16 the demo trains in float32 (presets.demo_dtype), which on the 2-core AVX2-only
# EPYC measured here ran the LM's pre-training at 2.1 steps/s against about 12 with AVX-512 BF16: the full demo
# would take well over an hour, past what CI allows. There `make demo` still runs it; this guard runs where the
# CPU has native bf16 (AVX-512 BF16 or AMX), and the fast learning guard (tests/train/test_learning.py) runs on both.
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not cpu_bf16_native(), reason="no native bf16 on this CPU: the full demo runs in float32, over an hour here")]

VQA_FLOOR = 0.68  # measured 77.3% to 87.8% with the schedule (two CPUs); 73.2% to 82.2% without it
READING_FLOOR = 0.28  # VQA minus the other-image control: measured 38.7 to 49.0 points with the schedule
# general-text perplexity against the base LM's: 1.12x, 1.12x and 1.03x with the schedule (LM seeds +0, +1, +2),
# and 0.73x and 1.49x on LM seeds +0 and +2 built on a 2-core Intel Xeon with AMX (2026-12-08); 0.91x to 1.40x
# before it; 1.67x without kl_to_base (the goal: 1.2x)
FORGETTING_CEILING = 1.6


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_full")
    main(["demo", "--preset", "full", "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def report(demo):
    return json.loads((demo / "report.json").read_text())


def test_the_full_demo_reads_its_images(report):
    vqa, other = report["vqa_accuracy"], report["other_image_vqa_accuracy"]
    assert vqa >= VQA_FLOOR, f"VQA {vqa:.1%} below the floor {VQA_FLOOR:.0%}"
    assert vqa - other >= READING_FLOOR, f"VQA {vqa:.1%} vs {other:.1%} with another image: the image is not read"
    assert vqa > report["majority_accuracy"] and report["vqa_accuracy_unseen_combos"] > report["chance_accuracy"]


def test_the_full_demo_keeps_its_text_skills(report):
    general = next(row for row in report["comparison"] if row["metric"] == "general_ppl")
    assert general["tuned"] <= FORGETTING_CEILING * general["base"], general


def test_llama_cpp_answers_like_chat(demo):
    """The GGUF pair `make demo` writes, through llama.cpp itself, on 400 held-out questions: the same greedy
    answers (measured 400/400 on a full-preset model, first-token logits within 0.008 at f16)."""
    from helpers.llama_cpp import demo_agreement

    r = demo_agreement(demo, 400)
    assert r["same"] >= 0.99 * r["n"] and abs(r["theirs"] - r["ours"]) <= 0.01, r
