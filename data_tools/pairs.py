"""Preference pairs from the model itself (`llava-lite data pairs`), and hallucination pairs.

    answers = sample_answers(assistant, prompts, samples=4, temperature=1.0)
    pairs, reasons = self_pairs(prompts, answers, make_verifier("agreement", min_share=0.5))
    more, why = hallucination_pairs(prompts, scenes, image_folder)   # from the annotations

`prompts` are conversations; each one's first user turn is asked and its first assistant answer,
when there is one, is the reference. The model samples `samples` answers per prompt; a verifier
gives a `Verdict`: the answer it accepts (`chosen`, what self-improvement keeps to train on), the
one it rejects (a pair needs both), and the reason when either is missing:

    reference   a sample is right when it equals the reference after VQA normalisation (the rule
                teachers' answers are ground truth on annotated images); chosen: a right sample,
                else the reference itself; rejected: the most frequent wrong sample.
    agreement   no ground truth: the majority answer is chosen when its share reaches `min_share`
                (self-consistency), the most frequent other answer rejected.
    judge       an OpenAI-compatible judge rates each sample 1-10 (eval/judge.py, with the
                reference as its reference when there is one); chosen: the best when rated at
                least `min_rating`; rejected: the worst when at least `min_gap` below it.

Hallucination pairs need the annotations: the reference answer against the same answer with a
colour or shape word swapped for one the image does not hold (POVID's injected hallucination), and
balanced yes/no existence questions (POPE's format) against the opposite answer.
"""
from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from llava_lite.config import ConfigError
from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.images import load_image
from llava_lite.eval.scorers import vqa_normalize

from .annotations import Scene, vocabulary
from .teachers.rule import grounded_qa


@dataclass
class Verdict:
    chosen: str | None = None  # the accepted answer
    rejected: str | None = None  # an answer worse than it: with `chosen`, a preference pair
    reason: str = "pair"  # why there is no pair (or no accepted answer)


def prompt_of(conv: Conversation) -> tuple[list[Message], str | None]:
    """The messages up to the first answer, and that answer (the reference), if any."""
    k = next((i for i, m in enumerate(conv.messages) if m.role == "assistant"), len(conv.messages))
    return conv.messages[:k], conv.messages[k].content if k < len(conv.messages) else None


def _by_answer(samples: Sequence[str]) -> list[tuple[str, int]]:
    """Distinct answers (first spelling of each normalised answer) with counts, most frequent first."""
    counts = Counter(vqa_normalize(s) for s in samples)
    first = {}
    for s in samples:
        first.setdefault(vqa_normalize(s), s.strip())
    return [(first[k], n) for k, n in counts.most_common() if k]


def reference() -> Callable[..., Verdict]:
    def verify(samples: Sequence[str], ref: str | None, question: str) -> Verdict:
        if ref is None:
            return Verdict(reason="no reference answer")
        truth = vqa_normalize(ref)
        right = next((a for a, _ in _by_answer(samples) if vqa_normalize(a) == truth), ref.strip())
        wrong = [a for a, _ in _by_answer(samples) if vqa_normalize(a) != truth]
        return Verdict(right, wrong[0]) if wrong else Verdict(right, reason="every sample right")
    return verify


def agreement(min_share: float = 0.5) -> Callable[..., Verdict]:
    def verify(samples: Sequence[str], ref: str | None, question: str) -> Verdict:
        answers = _by_answer(samples)
        if not answers:
            return Verdict(reason="empty samples")
        top, n = answers[0]
        if n / len(samples) < min_share or (len(answers) > 1 and n == answers[1][1]):
            return Verdict(reason="no majority")
        return Verdict(top, answers[1][0]) if len(answers) > 1 else Verdict(top, reason="samples agree")
    return verify


def judged(judge, min_gap: float = 3.0, min_rating: float = 7.0) -> Callable[..., Verdict]:
    from llava_lite.eval.judge import grade

    def verify(samples: Sequence[str], ref: str | None, question: str) -> Verdict:
        distinct = [a for a, _ in _by_answer(samples)]
        q = {"text": question, **({"annotation": ref} if ref else {})}
        ratings = grade(judge, [q] * len(distinct), distinct)["judge_ratings"] if distinct else []
        rated = [(r, a) for r, a in zip(ratings, distinct) if r is not None]
        if not rated:
            return Verdict(reason="judge gave no ratings")
        best, worst = max(rated), min(rated)
        chosen = best[1] if best[0] >= min_rating else None
        if chosen is None:
            return Verdict(reason="no sample rated high enough")
        return Verdict(chosen, worst[1]) if best[0] - worst[0] >= min_gap else Verdict(chosen, reason="ratings close")
    return verify


def make_verifier(kind: str, min_share: float = 0.5, judge: str | None = None, min_gap: float = 3.0,
                  base_url: str | None = None) -> Callable[..., Verdict]:
    """reference | agreement | judge (`judge`: an OpenAI-compatible endpoint's model name, or "rule")."""
    if kind == "reference":
        return reference()
    if kind == "agreement":
        return agreement(min_share)
    if kind != "judge":
        raise ConfigError(f"unknown verifier {kind!r}; choose reference, agreement or judge")
    if not judge:
        raise ConfigError("the judge verifier needs a judge: an OpenAI-compatible endpoint's model name, or 'rule'")
    from llava_lite.eval.judge import RuleJudge, counting
    from llava_lite.infer.openai_client import OpenAITeacher

    teacher = RuleJudge() if judge == "rule" else OpenAITeacher(model=judge, base_url=base_url, temperature=0.0,
                                                                  max_tokens=1024)
    return judged(counting(teacher), min_gap)


def sample_answers(assistant, prompts: list[Conversation], samples: int, temperature: float, top_p: float = 1.0,
                   max_new_tokens: int = 32, batch_size: int = 16, seed: int = 0) -> list[list[str]]:
    """`samples` sampled answers to each prompt's first question (seeded per batch: repeatable);
    images are opened batch by batch."""
    flat = [c for c in prompts for _ in range(samples)]
    out: list[str] = []
    for b in tqdm(range(0, len(flat), batch_size), desc="sampling", leave=False):
        chats = [(prompt_of(c)[0], [load_image(i) for i in c.images]) for c in flat[b:b + batch_size]]
        out += assistant.reply_batch(chats, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + b)
    return [out[i * samples:(i + 1) * samples] for i in range(len(prompts))]


def pair(conv: Conversation, chosen: str, rejected: str | None, suffix: str) -> Conversation:
    """The prompt of `conv` answered with `chosen` (a preference pair when `rejected` is given)."""
    messages = prompt_of(conv)[0] + [Message("assistant", chosen)]
    return Conversation(messages, list(conv.images), f"{conv.id or conv.source}-{suffix}", conv.source,
                        rejected=rejected)


def verdicts(prompts: list[Conversation], answers: list[list[str]], verify: Callable[..., Verdict]) -> list[Verdict]:
    out = []
    for conv, samples in zip(prompts, answers):
        messages, ref = prompt_of(conv)
        out.append(verify(samples, ref, messages[-1].content))
    return out


def self_pairs(prompts: list[Conversation], answers: list[list[str]], verify: Callable[..., Verdict]
               ) -> tuple[list[Conversation], Counter]:
    """Pairs where the verifier found one; the count of each reason there was none."""
    pairs, reasons = [], Counter()
    for conv, v in zip(prompts, verdicts(prompts, answers, verify)):
        if v.chosen is not None and v.rejected is not None:
            pairs.append(pair(conv, v.chosen, v.rejected, "self"))
        reasons[v.reason] += 1
    return pairs, reasons


def _swap(answer: str, present: set[str], pool: list[str], rng: random.Random) -> str | None:
    """`answer` with its first in-vocabulary word replaced by one the image does not hold."""
    words = answer.split()
    for i, w in enumerate(words):
        core = w.strip(".,!?").lower()
        if core in pool:
            absent = sorted(set(pool) - present - {core})
            if absent:
                words[i] = w.lower().replace(core, rng.choice(absent))
                if w[:1].isupper():
                    words[i] = words[i][:1].upper() + words[i][1:]
                return " ".join(words)
    return None


def hallucination_pairs(prompts: list[Conversation], scenes: list[Scene], image_folder: str, seed: int = 0,
                        existence: int = 1) -> tuple[list[Conversation], Counter]:
    """POVID-style pairs for prompts whose image is annotated (scene file names relative to
    `image_folder`), plus `existence` yes and as many no existence questions per annotated image,
    each against the opposite answer."""
    rng = random.Random(seed)
    shapes, colors = vocabulary(scenes)
    by_file = {os.path.normpath(s.file_name): s for s in scenes}
    pairs, reasons, asked = [], Counter(), set()
    for conv in prompts:
        key = os.path.normpath(os.path.relpath(str(conv.images[0]), image_folder)) if len(conv.images) == 1 else None
        scene = by_file.get(key)
        ref = prompt_of(conv)[1]
        if scene is None:
            reasons["no annotations for the image"] += 1
            continue
        present = {o["category"] for o in scene.objects} | {o["color"] for o in scene.objects if o.get("color")}
        wrong = _swap(ref, present, shapes + colors, rng) if ref else None
        if wrong is not None:
            pairs.append(pair(conv, ref.strip(), wrong, "povid"))
            reasons["hallucinated answer"] += 1
        else:
            reasons["answer names no colour or shape"] += 1
        if existence and scene.file_name not in asked:
            asked.add(scene.file_name)
            qas = [q for q in grounded_qa(scene.objects, rng, shapes=shapes, colors=colors, per_type=existence)
                   if q["type"] == "exists"]
            for j, q in enumerate(qas):
                ask = Conversation([Message("user", f"{IMAGE_TOKEN}\n{q['question']}")], list(conv.images),
                                   f"{scene.id}-exists-{j}", conv.source)
                pairs.append(pair(ask, q["answer"], "no" if q["answer"] == "yes" else "yes", "pope"))
                reasons["existence question"] += 1
    return pairs, reasons
