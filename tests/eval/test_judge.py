"""The judge: verdict and rating parsing, the win-rate arithmetic with swapped positions (offline rule
judges), request counting, and an OpenAI-compatible judge served by `llava-lite serve`."""
from __future__ import annotations

import pytest
from helpers.server import KEY, LiveServer, direct

from llava_lite.eval.judge import PAIR, SINGLE, RuleJudge, counting, grade, parse_rating, parse_verdict, win_rate
from llava_lite.infer.openai_client import OpenAITeacher, Request
from llava_lite.serve import Settings, create_app

QUESTIONS = [{"question_id": i, "text": f"What colour is object {i}?", "annotation": a}
             for i, a in enumerate(["red", "blue", "green", "pink", "cyan"])]
# model vs reference per question: win, loss, both right (tie), both wrong (tie), win
MODEL = ["Red.", "yellow", "the green", "black", "Cyan"]
REFERENCE = ["blue", "Blue", "green", "white", "red"]


@pytest.mark.parametrize("text, rating", [("Rating: [[7]]", 7.0), ("[[8.5]] overall", 8.5), ("score [6]", 6.0),
                                          ("[[11]]", None), ("no rating", None), ("[[0]]", None)])
def test_parse_rating(text, rating):
    assert parse_rating(text) == rating


@pytest.mark.parametrize("text, verdict", [("so [[A]]", "A"), ("[[B]]", "B"), ("tie: [[C]]", "C"),
                                           ("[[A]] or [[B]]", None), ("A is better", None),
                                           ("[[A]] ... final [[A]]", "A")])
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_rule_judge_win_rate_is_exact():
    judge = counting(RuleJudge())
    r = win_rate(judge, QUESTIONS, MODEL, REFERENCE)
    assert (r["judge_wins"], r["judge_losses"], r["judge_ties"], r["judge_inconsistent"]) == (2, 1, 2, 0)
    assert r["judge_win_rate"] == pytest.approx((2 + 2 / 2) / 5)
    assert judge.requests == 2 * len(QUESTIONS) and judge.failures == 0
    flipped = win_rate(RuleJudge(), QUESTIONS, REFERENCE, MODEL)  # the other side's view
    assert flipped["judge_win_rate"] == pytest.approx(1 - r["judge_win_rate"])


class FirstPositionJudge:
    """Always prefers whatever is shown first: pure order bias, which swapping must cancel."""

    name, concurrency = "first", 1

    def complete(self, request: Request) -> str:
        return "[[A]]"


def test_order_bias_cancels_into_ties():
    r = win_rate(FirstPositionJudge(), QUESTIONS, MODEL, REFERENCE)
    assert r["judge_ties"] == r["judge_inconsistent"] == len(QUESTIONS)
    assert r["judge_win_rate"] == 0.5


def test_rule_judge_grades_and_counts():
    judge = counting(RuleJudge())
    g = grade(judge, QUESTIONS, MODEL)
    assert g["judge_ratings"] == [10, 1, 10, 1, 10]
    assert g["judge_score"] == pytest.approx(32 / 5) and g["judge_unrated"] == 0
    assert judge.requests == len(QUESTIONS)
    failing = counting(RuleJudge())
    g = grade(failing, [{"text": "q"}], ["x"])  # no annotation: the rule judge fails that request
    assert g["judge_score"] is None and g["judge_unrated"] == 1 and failing.failures == 1


def test_judge_served_by_llava_lite(long_context_assistant):
    """A real OpenAI-compatible judge: the requests reach the server with the rubric, and what the
    report counts is what the judge replied (a random tiny model rarely writes a valid rating)."""
    with LiveServer(create_app(long_context_assistant, Settings(model_name="judge", api_key=KEY))) as server:
        judge = counting(OpenAITeacher(model="judge", base_url=f"{server.url}/v1", api_key=KEY, concurrency=2,
                                       temperature=0.0, max_tokens=8, max_retries=1))
        questions, answers = QUESTIONS[:2], MODEL[:2]
        g = grade(judge, questions, answers)
        p = win_rate(judge, questions, answers, REFERENCE[:2])
    assert judge.requests == len(questions) * 3 and judge.failures == 0
    for q, a, rating in zip(questions, answers, g["judge_ratings"]):
        turns = [("system", "You are a helpful assistant."),
                 ("user", SINGLE.format(question=q["text"], answer=a, ref_note=" A reference answer is given; judge "
                                        "correctness against it.", ref_block="[The Start of Reference Answer]\n"
                                        f"{q['annotation']}\n[The End of Reference Answer]\n\n"))]
        reply = direct(long_context_assistant, turns, max_new_tokens=8, temperature=0.0).text
        assert rating == parse_rating(reply)
    assert g["judge_rated"] + g["judge_unrated"] == len(questions)
    assert p["judge_wins"] + p["judge_losses"] + p["judge_ties"] == len(questions)
    assert "[[C]]" in PAIR and "[[rating]]" in SINGLE
