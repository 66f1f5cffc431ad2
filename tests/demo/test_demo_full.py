"""The full demo as `make demo` runs it, from nothing, with floors on what it learns (~15 min on two
cores: world, tokenizer, CLIP and LM pre-training, both stages, evaluation).

Every other test stays green when the demo model stops reading its images; this one does not. The
floors sit below every measured run by more than the spread across seeds: VQA was 53.9%, 58.6% and
62.5% over three base-LM initialisation seeds and 60.5% to 62.5% over three stage-training seeds on
one 2-core machine, 70.1% with the base models another machine of that kind built (2026-12-05) and
72.8% on two others (the base LM's initialisation moves with the CPU's rounding); asking each question
about another image instead gave 40.8% and 41.1% (answer priors). The exportable tower layout (one
token per patch from the raw penultimate block, instead of 2x2 pixel shuffle and ln_post) gave 69.9%
on the base models that gave 70.1%, 40.1% with another image.
"""
from __future__ import annotations

import json

import pytest

from llava_lite.cli import main

pytestmark = pytest.mark.slow

VQA_FLOOR = 0.50  # measured 53.9% to 72.8%
READING_FLOOR = 0.10  # VQA minus the other-image control: measured 21.4 to 29.2 points
FORGETTING_CEILING = 3.0  # general-text perplexity against the base LM's: measured 1.43x to 1.90x


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_full")
    main(["demo", "--preset", "full", "--out", str(out)])
    return json.loads((out / "report.json").read_text())


def test_the_full_demo_reads_its_images(report):
    vqa, other = report["vqa_accuracy"], report["other_image_vqa_accuracy"]
    assert vqa >= VQA_FLOOR, f"VQA {vqa:.1%} below the floor {VQA_FLOOR:.0%}"
    assert vqa - other >= READING_FLOOR, f"VQA {vqa:.1%} vs {other:.1%} with another image: the image is not read"
    assert vqa > report["majority_accuracy"] and report["vqa_accuracy_unseen_combos"] > report["chance_accuracy"]


def test_the_full_demo_keeps_its_text_skills(report):
    general = next(row for row in report["comparison"] if row["metric"] == "general_ppl")
    assert general["tuned"] <= FORGETTING_CEILING * general["base"], general
