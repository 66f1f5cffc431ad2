"""The demo's report.md and plots (llava_lite/demo/report.py) from a made-up report: the end-to-end demo test
(slow) writes them from a real run; this one checks every table in about a second."""
from __future__ import annotations

import json

from llava_lite.demo.report import write_summary

TYPES = {"color": (0.5, 0.8, 0.4), "count": (0.25, 0.6, 0.3)}  # stage 1, stage 2, stage 2 on another image


def made_up_report() -> dict:
    return {
        "preset": "fast", "vqa_accuracy": 0.75, "vqa_accuracy_unseen_combos": None, "chance_accuracy": 0.2,
        "majority_accuracy": 0.3, "stage1_vqa_accuracy": 0.375, "other_image_vqa_accuracy": 0.35,
        "instruction_ppl": 3.21, "general_ppl": 12.5, "text_task_ppl": 4.5, "wall_seconds": 91.6,
        "vqa_accuracy_by_type": {t: v[1] for t, v in TYPES.items()},
        "stage1_vqa_accuracy_by_type": {t: v[0] for t, v in TYPES.items()},
        "other_image_vqa_accuracy_by_type": {t: v[2] for t, v in TYPES.items()},
        "base_models": {"clip": {"object_color": 0.9, "object_shape": 0.7},
                        "lm": {"reading": 0.55, "reading_other_captions": 0.31}},
        "pope_questions": 40, "pope_f1": 0.6, "pope_accuracy": 0.65, "pope_yes_ratio": 0.45,
        "pope_by_category": {"random": {"f1": 0.7, "accuracy": 0.72, "yes_ratio": 0.5}},
        "choice_questions": 20, "choice_chance": 0.25, "choice_accuracy": 0.5, "choice_accuracy_norm": 0.55,
        "choice_text_questions": 8, "choice_text_accuracy": 0.625,
        "comparison": [{"metric": "text_accuracy", "label": "text tasks, exact match", "base": 0.5, "tuned": 0.4,
                        "delta": -0.1},
                       {"metric": "general_ppl", "label": "world text perplexity", "base": 10.0, "tuned": 12.5,
                        "delta": 2.5, "ratio": 1.25}],
        "comparison_notes": ["the base LM has no chat template"],
        "vqa_accuracy_by_choices_in_image": [{"category": "color", "choices_in_image": 3, "questions": 40,
                                              "accuracy": 0.45}],
    }


def test_summary_tables_and_plots(tmp_path):
    for stage in ("stage1", "stage2"):
        (tmp_path / stage).mkdir()
        rows = [{"step": i + 1, "loss": 2.0 / (i + 1)} for i in range(3)]
        (tmp_path / stage / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_summary(tmp_path, made_up_report())
    md = (tmp_path / "report.md").read_text().splitlines()
    assert md[0] == "# llava-lite demo (fast preset)"
    for line in ["| VQA exact match (held-out images) | 75.0% |",
                 "| VQA exact match, unseen colour-shape combos | 0.0% |",  # None: no unseen combo was asked
                 "| instruction perplexity (held-out, response tokens) | 3.21 |", "| wall time | 92 s |",
                 "| color | 50.0% | 80.0% | 40.0% |", "| count | 25.0% | 60.0% | 30.0% |",
                 "| color, 3 | 40 | 45.0% | 33.3% |",  # binding: 3 colours in the image, chance without binding 1/3
                 "| CLIP probe: object colour | 90.0% |",
                 "| LM reading: stage 2's questions, the image's captions in place of the image | 55.0% |",
                 "| the same questions with another image's captions (answer priors) | 31.0% |",
                 "| F1 (yes = positive) | 60.0% | 50.0% (coin), 66.7% (always yes) |",
                 "| random: F1 / accuracy / yes-ratio | 70.0% / 72.0% / 50.0% | |",
                 "| accuracy (per byte of option) | 55.0% | 25.0% |",
                 "| text rows only (caption + question), 8 | 62.5% | |",
                 "| text tasks, exact match | 50.0% | 40.0% | -10.0 pt |",
                 "| world text perplexity | 10.00 | 12.50 | +2.50 (1.25x) |",
                 "- the base LM has no chat template", "![loss](loss_curves.png)"]:
        assert line in md, line
    assert not any("CLIP probe: patch position" in line for line in md)  # a probe that was not run is left out
    for png in ("loss_curves.png", "vqa_accuracy.png"):
        assert (tmp_path / png).read_bytes().startswith(b"\x89PNG")
