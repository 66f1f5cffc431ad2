"""Evaluation: answer normalisation, baselines, VQA bookkeeping, perplexities against the model's own loss."""
from __future__ import annotations

import json
import math

import pytest
import torch
from tiny import make_llava_data

from llava_lite.cli import main
from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.evaluate import chance_accuracy, normalize_answer, read_questions
from llava_lite.model import LlavaLite


def test_normalize_answer():
    assert normalize_answer(" The Red. ") == "red"
    assert normalize_answer("a circle!") == "circle"
    assert normalize_answer("3") == "3"


def test_chance_and_majority():
    qs = [{"category": "color", "answer": a} for a in ["red", "red", "blue", "green"]]
    qs += [{"category": "exists", "answer": a} for a in ["yes", "no"]]
    uniform, majority = chance_accuracy(qs)
    assert uniform == pytest.approx((4 / 3 + 2 / 2) / 6)
    assert majority == pytest.approx((2 + 1) / 6)


def test_eval_command_writes_consistent_report(tiny_lm, tmp_path, capsys):
    data = make_llava_data(tmp_path / "d", n=8)
    torch.manual_seed(0)
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm)))
    model.save_pretrained(tmp_path / "m")
    qs = tmp_path / "d" / "images" / "q.jsonl"
    qs.write_text("".join(json.dumps({"question_id": i, "image": f"{i}.png", "text": "What colour?", "answer": "red",
                                      "category": "color", "unseen_combo": i % 2 == 0}) + "\n" for i in range(4)))
    general = tmp_path / "general.txt"
    general.write_text("A red circle.\nThe quick brown fox.\n")
    main(["eval", "--model", str(tmp_path / "m"), "--vqa", str(qs), "--instructions", str(data["conversations"]),
          "--image-folder", str(tmp_path / "d" / "images"), "--general", str(general), "--out", str(tmp_path / "e"),
          "--max-new-tokens", "4"])
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    answers = [json.loads(x) for x in (tmp_path / "e" / "vqa_answers.jsonl").read_text().splitlines()]
    assert len(answers) == report["vqa_questions"] == len(read_questions(qs)) == 4
    assert report["vqa_accuracy"] == sum(a["correct"] for a in answers) / 4
    assert report["chance_accuracy"] == 1.0  # one possible answer
    vocab = len(LlavaLite.from_pretrained(tmp_path / "m").tokenizer)
    for key in ("instruction_ppl", "general_ppl"):  # a random model is near-uniform over the vocabulary
        assert vocab / 4 < report[key] < vocab * 4
    assert report["general_to_instruction_ppl_ratio"] == pytest.approx(report["general_ppl"] / report["instruction_ppl"])
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == report
