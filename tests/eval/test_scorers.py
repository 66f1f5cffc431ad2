"""Scorers against hand-computed cases; the one question reader against good and bad JSONL; the one
VQA normaliser against hand-made cases that follow the official VQA eval script (vqaEval.py)."""
from __future__ import annotations

import json

import pytest

from llava_lite.constants import SHORT_ANSWER
from llava_lite.data.conversation import DataError
from llava_lite.eval.scorers import (
    MC_ANSWER,
    answer_record,
    mc_accuracy,
    parse_letter,
    parse_yes_no,
    pope_metrics,
    read_questions,
    render_options,
    vqa_accuracy,
    vqa_normalize,
    vqa_score,
    with_suffix,
)


def _write(tmp_path, lines):
    p = tmp_path / "q.jsonl"
    p.write_text("".join(x + "\n" for x in lines))
    return p


def test_read_questions_keeps_optional_fields(tmp_path):
    rows = [{"question_id": 1, "image": "a.png", "text": "What color?", "category": "color", "answer": "red"},
            {"question_id": "q2", "text": "Text only?", "answers": ["yes"] * 10},
            {"question_id": 3, "image": "b.png", "text": "Which?", "options": ["cat", "dog"], "answer": "B"}]
    p = _write(tmp_path, [json.dumps(r) for r in rows[:2]] + ["", json.dumps(rows[2])])
    assert read_questions(p) == rows


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"text": "Q?"}', "question has no field 'question_id'"),
    ('{"question_id": 2}', "question has no field 'text'"),
    ('{"question_id": 2, "text": ""}', "text must be a non-empty string"),
    ('{"question_id": true, "text": "Q?"}', "question_id must be a string or an integer"),
    ('{"question_id": 2, "text": "Q?", "answer": 3}', "answer must be a string, got int"),
    ('{"question_id": 2, "text": "Q?", "answers": []}', "answers must be a non-empty list of strings"),
    ('{"question_id": 2, "text": "Q?", "options": ["only"]}', "options must be a list of 2 to 26 strings"),
    ('{"question_id": 1, "text": "Q?"}', "question_id 1 repeats line 1"),
])
def test_read_questions_errors_name_the_line(tmp_path, line, message):
    p = _write(tmp_path, ['{"question_id": 1, "text": "ok"}', line])
    with pytest.raises(DataError) as e:
        read_questions(p)
    text = str(e.value)
    assert text.startswith(f"{p}:2: ") and message in text and "\n" not in text


@pytest.mark.parametrize("line, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"choices": ["x", "y"], "answer": 0}', "needs a string 'question'"),
    ('{"question": "q", "choices": ["x"], "answer": 0}', "'choices' must be a list of at least 2"),
    ('{"question": "q", "choices": ["x", "y"], "answer": 5}', "is neither an index, a letter nor one of the choices"),
])
def test_read_choice_questions_errors_name_the_line(tmp_path, line, message):
    """The same reader, the same one-line errors, for the log-likelihood choice sets."""
    p = _write(tmp_path, ['{"question": "q", "choices": ["x", "y"], "answer": "B"}', line])
    with pytest.raises(DataError) as e:
        read_questions(p, "choice")
    text = str(e.value)
    assert text.startswith(f"{p}:2: ") and message in text and "\n" not in text


@pytest.mark.parametrize("kind", ["llava", "choice"])
def test_read_questions_empty_file(tmp_path, kind):
    p = _write(tmp_path, ["", "  "])
    with pytest.raises(DataError, match="no questions"):
        read_questions(p, kind)


def test_answer_record_is_llava_format():
    q = {"question_id": 7, "image": "x.png", "text": "What?\n" + SHORT_ANSWER}
    a, b = answer_record(q, "red", "llava-lite"), answer_record(q, "red", "llava-lite")
    assert list(a) == ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    fields = (a["question_id"], a["prompt"], a["text"], a["model_id"], a["metadata"])
    assert fields == (7, q["text"], "red", "llava-lite", {})
    assert len(a["answer_id"]) == 32 and int(a["answer_id"], 16) >= 0 and a["answer_id"] != b["answer_id"]


def test_suffixes_and_options():
    assert SHORT_ANSWER == "Answer the question using a single word or phrase."
    assert MC_ANSWER == "Answer with the option's letter from the given choices directly."
    once = with_suffix("What color?", SHORT_ANSWER)
    assert once == "What color?\nAnswer the question using a single word or phrase."
    assert with_suffix(once, SHORT_ANSWER) == once
    assert with_suffix(once, MC_ANSWER) == once + "\n" + MC_ANSWER
    assert render_options("Which animal?", ["cat", "dog", "fish"]) == "Which animal?\nA. cat\nB. dog\nC. fish"
    with pytest.raises(ValueError):
        render_options("Q", ["x"] * 27)


@pytest.mark.parametrize("raw, norm", [
    ("The dog.", "dog"),
    ("a dog.", "dog"),
    ("the man's hat", "man's hat"),  # the apostrophe is no punctuation in the official script
    ("The Man's Hat!", "man's hat"),
    ("dont", "don't"),
    ("doesnt know", "doesn't know"),
    ("two", "2"),
    ("Three dogs", "3 dogs"),
    ("zero", "0"),
    ("eleven", "eleven"),  # the official number map stops at ten
    ("No.", "no"),
    (" The Red. ", "red"),
    ("a circle!", "circle"),
    ("an apple, please", "apple please"),  # "," next to a space: dropped
    ("3,5", "35"),  # a comma between digits: punctuation dropped
    ("red,blue", "red blue"),  # no space, no digits: spaced
    ("1,000 red,blue", "1000 redblue"),  # a comma between digits anywhere glues every mark in the text
    ("what?", "what"),
    ("e.g.", "eg"),  # periods not before a digit are stripped
    ("3.14", "3.14"),
    ("end. 5", "end 5"),
    ("." * 34, ".."),  # vqaEval.py passes re.UNICODE (32) as sub's count: at most 32 periods go
    ("yes: left", "yes: left"),  # ':' is not in the official punctuation list
    ("t-shirt", "t shirt"),
    ("left - right", "left right"),  # "-" next to a space: dropped
    ("Two", "2"),
    ("none", "0"),
    ("ten apples", "10 apples"),
    ("1,000", "1000"),  # comma between digits: punctuation is dropped, not spaced
    ("yes, it is", "yes it is"),  # punctuation next to a space is dropped
    ("black-and-white", "black and white"),  # otherwise it becomes a space
    ("2.5", "2.5"),  # a period before a digit stays
    ("2.", "2"),
    ("dont know", "don't know"),
    ("whats that", "what's that"),
    ("Im here", "im here"),  # capitalised keys in the official table never match
    (" an\tapple\n", "apple"),
    ("(left)", "left"),
    ("top left", "top left"),
])
def test_vqa_normalize(raw, norm):
    assert vqa_normalize(raw) == norm


@pytest.mark.parametrize("hits, score", [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)])
def test_vqa_score_ten_answers_leave_one_out(hits, score):
    # k matches: k subsets lose one match (min((k-1)/3, 1)), 10-k keep k (min(k/3, 1)); e.g. k=2:
    # (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    answers = ["red"] * hits + ["blue"] * (10 - hits)
    assert vqa_score("Red.", answers) == pytest.approx(score, abs=1e-12)


def test_vqa_score_single_answer_is_exact_match():
    assert vqa_score("Two", "2") == 1.0
    assert vqa_score("the circle", ["circle"]) == 1.0
    assert vqa_score("circles", "circle") == 0.0
    assert vqa_accuracy(["two", "blue", "Yes."], ["2", ["blue"] * 2 + ["red"] * 8, "no"]) == pytest.approx(1.6 / 3)
    with pytest.raises(ValueError):
        vqa_accuracy(["a"], ["a", "b"])


@pytest.mark.parametrize("reply, parsed", [
    ("Yes, there is a dog.", "yes"), ("No.", "no"), ("There is not a cat. Yes.", "no"), ("Yes", "yes"),
    ("I think no", "no"), ("NO", "yes"), ("yes. No doubt", "yes"), ("No, there isn't", "no"),
])
def test_parse_yes_no_as_eval_pope(reply, parsed):
    assert parse_yes_no(reply) == parsed


def test_pope_metrics_hand_computed():
    preds = ["Yes, there is a dog.", "No.", "There is not a cat in the image.", "Yes", "I think no", "NO",
             "yes. No doubt"]
    labels = ["yes", "no", "yes", "no", "no", "no", "Yes"]
    # guesses Y N N Y N Y Y -> TP 2 (1, 7), FP 2 (4, 6), FN 1 (3), TN 2 (2, 5)
    m = pope_metrics(preds, labels)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 2, 1, 2)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)  # 2 * 1/2 * 2/3 / (1/2 + 2/3)
    assert m["yes_ratio"] == pytest.approx(4 / 7)
    assert pope_metrics(["no", "no"], ["yes", "no"])["precision"] == 0.0
    with pytest.raises(ValueError, match="neither"):
        pope_metrics(["yes"], ["maybe"])


@pytest.mark.parametrize("reply, n, parsed", [
    ("B", 4, "B"), ("b.", 4, "B"), ("(C)", 4, "C"), ("E", 4, None), ("E", 5, "E"),
    ("A. cat", 4, "A"), ("C) the dog", 4, "C"),
    ("The answer is C.", 4, "C"), ("Answer: (D)", 4, "D"), ("the answer is a cat", 4, None),
    ("I think it is B", 4, "B"),  # "I" is no option of four
    ("I think it is B", 26, None),  # ... but of 26 it is, and two letters are ambiguous
    ("A cat, or B", 4, None), ("I don't know", 4, None), ("", 4, None), ("BC", 4, None),
])
def test_parse_letter(reply, n, parsed):
    assert parse_letter(reply, n) == parsed


def test_parse_letter_by_option_text_and_mc_accuracy():
    assert parse_letter("It is the red one", 2, ["red", "blue"]) == "A"
    assert parse_letter("red or blue", 2, ["red", "blue"]) is None
    assert mc_accuracy(["A", "The answer is B.", "C", "dunno"], ["A", "C", 2, "d"], 4) == 0.5
    assert mc_accuracy(["E", "E"], ["E", "E"], [5, 4]) == 0.5
