"""Evaluation: baselines, VQA bookkeeping, perplexities against the model's own loss."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny import make_llava_data

from llava_lite.cli import main
from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.eval.evaluate import chance_accuracy
from llava_lite.eval.scorers import read_questions
from llava_lite.model.llava import LlavaLite


def test_chance_and_majority():
    qs = [{"category": "color", "answer": a} for a in ["red", "red", "blue", "green"]]
    qs += [{"category": "exists", "answer": a} for a in ["yes", "no"]]
    uniform, majority = chance_accuracy(qs)
    assert uniform == pytest.approx((4 / 3 + 2 / 2) / 6)
    assert majority == pytest.approx((2 + 1) / 6)


def test_vqa_accuracy_by_choices_in_image():
    """Rows that say how many answers of their kind the image holds are also scored per (type, that number)."""
    from llava_lite.eval.evaluate import vqa_accuracy

    rows = [{"question_id": i, "image": "x.png", "text": "What color is the star?", "answer": a, "category": "color",
             **({"choices_in_image": n} if n else {})}
            for i, (a, n) in enumerate([("red", 1), ("red", 2), ("blue", 2), ("green", 2), ("red", 0)])]
    report = vqa_accuracy(None, rows, ".", replies=["red", "red", "red", "green", "blue"])
    assert report["vqa_accuracy"] == pytest.approx(3 / 5)
    assert report["vqa_accuracy_by_choices_in_image"] == [
        {"category": "color", "choices_in_image": 1, "questions": 1, "accuracy": 1.0},
        {"category": "color", "choices_in_image": 2, "questions": 3, "accuracy": pytest.approx(2 / 3)}]


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
    assert report["general_to_instruction_ppl_ratio"] == pytest.approx(
        report["general_ppl"] / report["instruction_ppl"]
    )
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):]) == report


def test_prompts_get_llava_suffixes_once():
    from llava_lite.constants import SHORT_ANSWER
    from llava_lite.eval.benchmarks import build_prompt
    from llava_lite.eval.scorers import MC_ANSWER

    row = {"question_id": 1, "image": "x.png", "text": "What is it?"}
    assert build_prompt(row, "vqa") == f"<image>\nWhat is it?\n{SHORT_ANSWER}"
    assert build_prompt({**row, "text": f"What is it?\n{SHORT_ANSWER}"}, "pope") == build_prompt(row, "vqa")
    mc = {"question_id": 2, "text": "Which?", "options": ["cat", "dog"]}
    assert build_prompt(mc, "mc") == f"Which?\nA. cat\nB. dog\n{MC_ANSWER}"  # text-only: no placeholder
    assert build_prompt(row, "vqa", suffix=False) == "<image>\nWhat is it?"


def test_eval_benchmarks_base_table_and_judge(tiny_lm, tmp_path):
    """LLaVA formats in and out, each scorer's number recomputed from the answer files, and base vs
    tuned where the tuned model is the base LM untouched: every text number must agree exactly."""
    from llava_lite.eval.scorers import mc_accuracy, pope_metrics, vqa_accuracy

    data = make_llava_data(tmp_path / "d", n=8)
    images = tmp_path / "d" / "images"
    torch.manual_seed(0)
    LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm))).save_pretrained(
        tmp_path / "m"
    )

    def jsonl(name, rows):
        (images / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(images / name)

    pope = jsonl("pope.jsonl", [{"question_id": i, "image": f"{i}.png", "text": "Is there a red square in the image?",
                                 "answer": "yes" if i % 2 else "no", "category": "random"} for i in range(6)])
    mc = jsonl(
        "mc.jsonl",
        [
            {
                "question_id": i,
                "image": f"{i}.png",
                "text": "What colour?",
                "options": ["red", "blue", "green"],
                "answer": "ABC"[i % 3],
            }
            for i in range(3)
        ]
        + [{"question_id": 9, "text": "2+2?", "options": ["4", "5"], "answer": "A"}],
    )
    vqa = jsonl(
        "vqa.jsonl",
        [
            {"question_id": "a", "image": "0.png", "text": "Colour?", "answers": ["red"] * 3 + ["blue"] * 7},
            {"question_id": "b", "image": "1.png", "text": "Colour?"},
        ],
    )  # LLaVA style: no ground truth
    choice = jsonl(
        "choice.jsonl",
        [
            {"question": "Add 2 and 3.", "choices": ["5", "6", "7"], "answer": 0},
            {"question": "Add 1 and 3.", "choices": ["4", "2"], "answer": "4"},
            {"question": "What colour?", "choices": ["red", "blue"], "answer": 0, "image": "0.png"},
        ],
    )
    judged = jsonl(
        "judge.jsonl", [{"question_id": i, "text": f"Add {i} and 2.", "annotation": str(i + 2)} for i in range(3)]
    )
    ref = jsonl("ref.jsonl", [{"question_id": i, "text": str(i + 2 if i else 0)} for i in range(3)])
    general = tmp_path / "general.txt"
    general.write_text("A red circle.\nThe quick brown fox.\n")
    out = tmp_path / "e"
    main(["eval", "--model", str(tmp_path / "m"), "--base", str(tiny_lm), "--pope", pope, "--mc", mc, "--vqa", vqa,
          "--choice", choice, "--general", str(general), "--instructions", str(data["conversations"]), "--image-folder",
          str(images), "--judge", "rule", "--judge-questions", judged, "--judge-reference", ref, "--out", str(out),
          "--max-new-tokens", "4", "--judge-max-new-tokens", "4", "--device", "cpu"])
    report = json.loads((out / "report.json").read_text())

    def answers(name):
        return [json.loads(x) for x in (out / name).read_text().splitlines()]

    pope_answers = answers("pope_llava_answers.jsonl")
    assert set(pope_answers[0]) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert pope_answers[0]["prompt"] == "Is there a red square in the image?"
    want = pope_metrics([a["text"] for a in pope_answers], ["yes" if i % 2 else "no" for i in range(6)])
    assert report["pope_f1"] == want["f1"] and report["pope_yes_ratio"] == want["yes_ratio"]
    mc_answers = answers("mc_llava_answers.jsonl")
    assert report["mc_accuracy"] == mc_accuracy([a["text"] for a in mc_answers], ["A", "B", "C", "A"], [3, 3, 3, 2])
    vqa_answers = answers("vqa_llava_answers.jsonl")
    assert [a["question_id"] for a in vqa_answers] == ["a", "b"]
    assert report["vqa_soft_accuracy"] == vqa_accuracy([vqa_answers[0]["text"]], [["red"] * 3 + ["blue"] * 7])
    assert "vqa_accuracy" not in report  # exact match needs an `answer` on every row
    assert report["choice_questions"] == 3 and report["base"]["choice_questions"] == 2
    assert report["judge_requests"] == 2 * (3 + 3 * 2) and report["judge_failed_requests"] == 0
    rows = {r["metric"]: r for r in report["comparison"]}
    # The tuned model is the base LM plus an unused <image> row: same text numbers, on the same rows.
    for key in ("general_ppl", "instruction_ppl", "choice_accuracy", "choice_accuracy_norm", "mc_accuracy",
                "judge_score", "judge_win_rate"):
        assert rows[key]["tuned"] == pytest.approx(rows[key]["base"], rel=1e-4), key
        assert abs(rows[key]["delta"]) < 1e-3 * max(1.0, abs(rows[key]["base"]))
    assert "pope_f1" not in rows  # every POPE row has an image: the plain LM cannot be compared there
    assert any(n.startswith("choice: 1 image row") for n in report["comparison_notes"])
    md = (out / "report.md").read_text()
    assert "| general-text perplexity |" in md and "left out" in md


def test_question_images_stay_in_the_image_folder(tmp_path):
    from llava_lite.data.conversation import DataError
    from llava_lite.eval.benchmarks import image_path

    (tmp_path / "imgs").mkdir()
    assert image_path(tmp_path / "imgs", "a.png") == str(tmp_path / "imgs" / "a.png")
    for ref in ("../secret.png", "/etc/passwd"):
        with pytest.raises(DataError, match="question 7"):
            image_path(tmp_path / "imgs", ref, "question 7")


def test_comparison_rows_and_a_foreign_base(tiny_lm, tiny_lm_llama3, tmp_path):
    from llava_lite.eval.compare import comparison, load_model, markdown

    rows = comparison({"general_ppl": 30.0, "choice_accuracy": 0.5, "pope_yes_ratio": 0.6, "only_tuned": 1},
                      {"general_ppl": 20.0, "choice_accuracy": 0.75, "pope_yes_ratio": 0.5})
    by = {r["metric"]: r for r in rows}
    assert set(by) == {"general_ppl", "choice_accuracy", "pope_yes_ratio"}
    assert by["general_ppl"]["ratio"] == 1.5 and by["general_ppl"]["better"] == "base"
    assert by["choice_accuracy"]["delta"] == -0.25 and "better" not in by["pope_yes_ratio"]
    md = markdown(rows, "t", "b")
    assert "| general-text perplexity | 20.000 | 30.000 | +10.000 | 1.500 |" in md and "-25.0 pt" in md
    torch.manual_seed(0)
    tuned = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm)))
    with pytest.raises(ValueError, match="tokenizer differs"):
        load_model(tiny_lm_llama3, like=tuned)
