"""Multiple choice by log-likelihood: per-option scores equal the model's own loss, batching changes
nothing, raw vs per-byte picks, answer forms."""
from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny import make_llava_data

from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.data.dataset import Collator
from llava_lite.data.loader import dataset_for
from llava_lite.eval import choice
from llava_lite.eval.scorers import read_questions
from llava_lite.model.llava import LlavaLite


@pytest.fixture(scope="module")
def model(tiny_lm):
    torch.manual_seed(0)
    return LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm))).eval()


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_answer_forms_and_errors(tmp_path):
    rows = read_questions(write(tmp_path / "q.jsonl", [
        {"question": "q", "choices": ["x", "y", "z"], "answer": 2},
        {"question": "q", "choices": ["x", "y"], "answer": "b"},
        {"question": "q", "choices": ["x", "y"], "answer": "x"}]), "choice")
    assert [r["answer_index"] for r in rows] == [2, 1, 0]
    for bad, msg in (({"question": "q", "choices": ["x"], "answer": 0}, "at least 2"),
                     ({"question": "q", "choices": ["x", "y"], "answer": 5}, "neither"),
                     ({"choices": ["x", "y"], "answer": 0}, "question")):
        with pytest.raises(ValueError, match=msg):
            read_questions(write(tmp_path / "bad.jsonl", [bad]), "choice")


def test_scores_are_the_models_own_loss_and_batching_changes_nothing(model, tmp_path):
    data = make_llava_data(tmp_path / "d", n=4)
    rows = [{"question": "What colour is the image?", "choices": ["red", "a blue square", "green"], "answer": 0,
             "image": "0.png"},
            {"question": "Add 2 and 3.", "choices": ["5", "six", "The answer is 7."], "answer": 0}]
    folder = data["captions"].parent / "images"
    batched = choice.score_options(model, rows, folder, batch_size=6)
    single = choice.score_options(model, rows, folder, batch_size=1)
    for a, b in zip(batched, single):
        for (lp_a, n_a), (lp_b, n_b) in zip(a, b):
            assert n_a == n_b and lp_a == pytest.approx(lp_b, abs=1e-4)
    # Each option's log-likelihood is minus the summed CE the model's forward reports for it.
    convs = choice.option_conversations(rows[0], folder)
    ds = dataset_for(model, convs, 2048, "chat", None)
    for conv_i, (lp, n) in enumerate(batched[0]):
        with torch.no_grad():
            out = model(**{k: v for k, v in Collator(model.tokenizer.pad_token_id)([ds[conv_i]]).items()
                           if k != "num_skipped"})
        assert lp == pytest.approx(-float(out.loss_sum), abs=1e-4) and n == int(out.num_tokens)
    assert batched[1][2][1] > batched[1][0][1]  # a longer option has more response tokens


def test_raw_and_per_byte_picks(model, monkeypatch):
    rows = [{"question": "q", "choices": ["a", "bbbbbbbbbb"], "answer_index": 1},
            {"question": "q", "choices": ["a", "bb"], "answer_index": 0}]
    # Option 1 of row 0: lower sum but far higher per byte; row 1: option 0 wins both ways.
    fake = [[(-2.0, 2), (-5.0, 11)], [(-1.0, 2), (-4.0, 3)]]
    monkeypatch.setattr(choice, "score_options", lambda *a, **k: fake)
    report = choice.choice_accuracy(model, rows)
    assert report["choice_accuracy"] == 0.5  # raw picks 0 and 0
    assert report["choice_accuracy_norm"] == 1.0  # per byte: -2/1 < -5/10, so option 1; then -1/1 > -4/2
    assert report["choice_chance"] == 0.5 and report["choice_text_accuracy"] == 0.5
