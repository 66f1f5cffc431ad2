"""A judge for open answers: MT-Bench single-answer grading and AlpacaEval-style pairwise win rates.

    judge = counting(OpenAITeacher(model="gpt-4o", base_url=..., requests_per_minute=60))  # any
    grade(judge, questions, answers)           # MT-Bench "single-v1": 1-10, the rubric in the prompt
    win_rate(judge, questions, answers, ref)   # "pair-v2", asked twice with the answers swapped

Any OpenAI-compatible endpoint goes through llava_lite.infer.openai_client (retries with back-off,
Retry-After, a shared rate limit, bounded concurrency, a reply journal so a rerun pays nothing
twice). The judge reads text only: for an image question it sees the question and the answers,
not the image, so judge image sets whose questions carry what matters (or use a reference
`annotation`, which the prompt shows as the reference answer).

Pairwise: each question is judged as (model, reference) and as (reference, model). A question
is won when both orders prefer the model, lost when both prefer the reference, and a tie when
the judge says tie or the two orders disagree (MT-Bench's rule for order bias). Win rate =
(wins + ties / 2) / questions (AlpacaEval's convention). Cost: one request per question per
graded answer, two per question for pairwise; `counting(...)` counts what was sent.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from llava_lite.eval.scorers import vqa_normalize
from llava_lite.infer.openai_client import Request, TeacherError, complete_all

SYSTEM = "You are a helpful assistant."
SINGLE = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response provided by an AI "
    "assistant to the user question displayed below. Your evaluation should consider factors such as the "
    "helpfulness, relevance, accuracy, depth, creativity, and level of detail of the response.{ref_note} Begin your "
    "evaluation by providing a short explanation. Be as objective as possible. After providing your explanation, "
    "you must rate the response on a scale of 1 to 10 by strictly following this format: \"[[rating]]\", for "
    "example: \"Rating: [[5]]\".\n\n[Question]\n{question}\n\n{ref_block}[The Start of Assistant's Answer]\n{answer}\n"
    "[The End of Assistant's Answer]")
PAIR = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user question displayed below. You should choose the assistant that follows the user's instructions and "
    "answers the user's question better. Your evaluation should consider factors such as the helpfulness, "
    "relevance, accuracy, depth, creativity, and level of detail of their responses.{ref_note} Begin your "
    "evaluation by comparing the two responses and provide a short explanation. Avoid any position biases and "
    "ensure that the order in which the responses were presented does not influence your decision. Do not allow "
    "the length of the responses to influence your evaluation. Do not favor certain names of the assistants. Be as "
    "objective as possible. After providing your explanation, output your final verdict by strictly following this "
    "format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie."
    "\n\n[User Question]\n{question}\n\n{ref_block}[The Start of Assistant A's Answer]\n{answer_a}\n"
    "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n"
    "[The End of Assistant B's Answer]")
REF_NOTE = " A reference answer is given; judge correctness against it."


def _ref(q: dict) -> dict:
    ref = q.get("annotation")
    return {"ref_note": REF_NOTE if ref else "",
            "ref_block": f"[The Start of Reference Answer]\n{ref}\n[The End of Reference Answer]\n\n" if ref else ""}


def _question(q: dict) -> str:
    return q.get("text") or q.get("question") or ""


class CountingJudge:
    """Wraps a teacher and counts the requests it answered and the ones that failed (after retries)."""

    def __init__(self, teacher) -> None:
        self.teacher, self.name, self.concurrency = teacher, teacher.name, teacher.concurrency
        self.requests = self.failures = 0
        self.lock = threading.Lock()

    def complete(self, request: Request) -> str:
        with self.lock:
            self.requests += 1
        try:
            return self.teacher.complete(request)
        except Exception:
            with self.lock:
                self.failures += 1
            raise


def counting(teacher) -> CountingJudge:
    return teacher if isinstance(teacher, CountingJudge) else CountingJudge(teacher)


def parse_rating(text: str) -> float | None:
    """MT-Bench's parse: "[[7]]" (or "[7]" failing that), 1 to 10; None when absent."""
    m = re.search(r"\[\[(\d+\.?\d*)\]\]", text) or re.search(r"\[(\d+\.?\d*)\]", text)
    if not m:
        return None
    value = float(m.group(1))
    return value if 1 <= value <= 10 else None


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "C" (tie) from "[[A]]" / "[[B]]" / "[[C]]"; None when none or several differ."""
    found = set(re.findall(r"\[\[([ABC])\]\]", text))
    return found.pop() if len(found) == 1 else None


def _run(judge, requests: list[Request], journal=None) -> list[str | None]:
    replies = complete_all(judge, requests, journal=journal, desc="judge", progress=False)
    return [r if isinstance(r, str) else None for r in replies]


def grade(judge, questions: list[dict], answers: list[str], journal=None) -> dict:
    """Mean 1-10 rating over the questions the judge rated; unparsable replies are counted apart."""
    requests = [
        Request(
            "judge-single",
            [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": SINGLE.format(question=_question(q), answer=a, **_ref(q))},
            ],
            payload={"question": _question(q), "answer": a, "reference": q.get("annotation")},
        )
        for q, a in zip(questions, answers)
    ]
    ratings = [parse_rating(r) if r is not None else None for r in _run(judge, requests, journal)]
    got = [r for r in ratings if r is not None]
    return {"judge_score": sum(got) / len(got) if got else None, "judge_rated": len(got),
            "judge_unrated": len(ratings) - len(got), "judge_ratings": ratings}


def win_rate(judge, questions: list[dict], answers: list[str], reference: list[str], journal=None) -> dict:
    """Pairwise against a reference model's answers, each question judged in both orders."""
    requests = []
    for q, a, r in zip(questions, answers, reference):
        for first, second in ((a, r), (r, a)):
            text = PAIR.format(question=_question(q), answer_a=first, answer_b=second, **_ref(q))
            requests.append(
                Request(
                    "judge-pair",
                    [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
                    payload={
                        "question": _question(q),
                        "answer_a": first,
                        "answer_b": second,
                        "reference": q.get("annotation"),
                    },
                )
            )
    verdicts = [parse_verdict(r) if r is not None else None for r in _run(judge, requests, journal)]
    outcome = {"win": 0, "loss": 0, "tie": 0}
    inconsistent = unparsed = 0
    for i in range(len(questions)):
        v1, v2 = verdicts[2 * i], verdicts[2 * i + 1]  # v1: model is A; v2: model is B
        unparsed += (v1 is None) + (v2 is None)
        model_says = {"A": "win", "B": "loss", "C": "tie", None: "tie"}[v1]
        swapped = {"A": "loss", "B": "win", "C": "tie", None: "tie"}[v2]
        if model_says == swapped:
            outcome[model_says] += 1
        else:
            outcome["tie"] += 1
            inconsistent += 1
    n = len(questions)
    return {"judge_win_rate": (outcome["win"] + outcome["tie"] / 2) / n if n else None,
            "judge_wins": outcome["win"], "judge_losses": outcome["loss"], "judge_ties": outcome["tie"],
            "judge_inconsistent": inconsistent, "judge_unparsed_verdicts": unparsed}


@dataclass
class RuleJudge:
    """An offline judge for tests and the demo: an answer is good when it matches the annotation
    (VQA normalisation); it reads the structured payload, not the prompt, as the rule teacher does."""

    name: str = "rule-judge"
    concurrency: int = 1

    def complete(self, request: Request) -> str:
        p = request.payload
        ref = vqa_normalize(p.get("reference") or "")
        if not ref:
            raise TeacherError("the rule judge needs an 'annotation' (reference answer) for every question")
        if request.task == "judge-single":
            return "Rating: [[10]]" if vqa_normalize(p["answer"]) == ref else "Rating: [[1]]"
        a, b = (vqa_normalize(p[k]) == ref for k in ("answer_a", "answer_b"))
        return "[[A]]" if a and not b else "[[B]]" if b and not a else "[[C]]"
