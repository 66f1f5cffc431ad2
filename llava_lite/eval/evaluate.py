"""`llava-lite eval`: every set a run is judged on, for one model or for base vs tuned.

Question sets use LLaVA's question JSONL (`question_id`, `image`, `text`, `category`; benchmarks.py
builds the prompts as LLaVA does and writes LLaVA's answer JSONL): `--vqa` (short answers; with
`answer` on every row also our exact match per question type, with `answers` VQAv2 soft
accuracy), `--pope` (yes/no), `--mc` (option letters). `--choice`: multiple choice by
log-likelihood (choice.py). Perplexities are token-weighted: exp(sum of CE over supervised
tokens / number of supervised tokens). `--judge-*`: open answers judged (judge.py). `--base`:
the same sets on the base model and a table of deltas (compare.py).
"""
from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from pathlib import Path

import torch

from llava_lite.data.conversation import DataError
from llava_lite.data.dataset import Collator, Sample
from llava_lite.data.loader import dataset_for
from llava_lite.data.readers import read_conversations
from llava_lite.eval.benchmarks import answer_questions, score, write_llava_answers
from llava_lite.eval.choice import choice_accuracy
from llava_lite.eval.compare import comparison, load_model, markdown, sees_images
from llava_lite.eval.judge import counting, grade, win_rate
from llava_lite.eval.scorers import read_questions, vqa_normalize, vqa_score
from llava_lite.infer.chat import Assistant
from llava_lite.model.llava import LlavaLite, default_device


def chance_accuracy(questions: list[dict]) -> tuple[float, float]:
    """(uniform guess among each category's answers, always answer the category's majority)."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    for q in questions:
        by_type[q.get("category", "all")][vqa_normalize(q["answer"])] += 1
    n = len(questions)
    uniform = sum(sum(c.values()) / len(c) for c in by_type.values()) / n
    majority = sum(max(c.values()) for c in by_type.values()) / n
    return uniform, majority


def vqa_accuracy(assistant: Assistant, questions: list[dict], image_folder: str | Path,
                 answers_path: Path | None = None, max_new_tokens: int = 16, batch_size: int = 32,
                 replies: list[str] | None = None) -> dict:
    """Exact match with each question's one `answer` (scorers.vqa_score: VQAv2 normalisation), per
    question type, and per type and `choices_in_image` where rows carry it (how many answers of the question's
    kind the image holds: the demo's colour and shape questions). Greedy answers, `batch_size` questions per
    forward pass (the answers one at a time would get, up to float rounding in bf16), unless `replies` are given."""
    if replies is None:
        replies = answer_questions(assistant, questions, image_folder, "vqa", max_new_tokens, batch_size)
    hits: dict[str, list[bool]] = defaultdict(list)
    unseen: list[bool] = []
    by_choices: dict[tuple[str, int], list[bool]] = defaultdict(list)
    out = open(answers_path, "w") if answers_path else None
    for q, text in zip(questions, replies):
        ok = vqa_score(text, q["answer"]) == 1.0
        hits[q.get("category", "all")].append(ok)
        if "choices_in_image" in q:
            by_choices[q.get("category", "all"), int(q["choices_in_image"])].append(ok)
        if q.get("unseen_combo"):
            unseen.append(ok)
        if out:
            out.write(json.dumps({"question_id": q["question_id"], "prompt": q["text"], "text": text,
                                  "answer": q["answer"], "correct": ok}) + "\n")
    if out:
        out.close()
    everything = [h for v in hits.values() for h in v]
    uniform, majority = chance_accuracy(questions)
    return {
        "vqa_accuracy": sum(everything) / max(1, len(everything)),
        "vqa_accuracy_by_type": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
        "vqa_accuracy_unseen_combos": sum(unseen) / len(unseen) if unseen else None,
        "vqa_accuracy_by_choices_in_image": [{"category": c, "choices_in_image": n, "questions": len(v),
                                              "accuracy": sum(v) / len(v)} for (c, n), v in sorted(by_choices.items())],
        "vqa_questions": len(everything),
        "chance_accuracy": uniform,
        "majority_accuracy": majority,
    }


@torch.no_grad()
def _perplexity(model: LlavaLite, dataset, batch_size: int) -> float:
    collate = Collator(model.tokenizer.pad_token_id)
    loss_sum, n = 0.0, 0
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        out = model(**{k: (v.to(model.device) if torch.is_tensor(v) else v) for k, v in batch.items()
                       if k != "num_skipped"})
        loss_sum += float(out.loss_sum)
        n += int(out.num_tokens)
    return math.exp(loss_sum / max(n, 1))


def response_perplexity(model: LlavaLite, path: str, fmt: str = "auto", image_folder: str | None = None,
                        max_length: int = 2048, batch_size: int = 8) -> float:
    """Perplexity of the assistant tokens of held-out conversations (the training objective)."""
    return conversations_perplexity(model, read_conversations(path, fmt, image_folder), max_length, batch_size)


def conversations_perplexity(
    model: LlavaLite, conversations: list, max_length: int = 2048, batch_size: int = 8
) -> float:
    ds = dataset_for(model, conversations, max_length, model.cfg.render_mode, model.cfg.system_prompt)
    return _perplexity(model, ds, batch_size)


class _TextDataset:
    """Plain text lines as fully supervised samples (no template): language-model perplexity."""

    def __init__(self, lines: list[str], tokenizer, max_length: int):
        self.rows = [
            tokenizer(line, add_special_tokens=False)["input_ids"][:max_length] for line in lines if line.strip()
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        ids = torch.tensor(self.rows[i])
        return Sample(ids, ids.clone(), None, False)


def text_perplexity(model: LlavaLite, path: str, max_length: int = 2048, batch_size: int = 8) -> float:
    lines = Path(path).read_text().splitlines()
    return _perplexity(model, _TextDataset(lines, model.tokenizer, max_length), batch_size)


def _text_rows(rows: list, text_only: bool, what: str, notes: list[str], images=lambda r: r.get("image")) -> list:
    """All rows, or for a text-only comparison the rows without an image (how many were left out is noted)."""
    if not text_only:
        return rows
    kept = [r for r in rows if not images(r)]
    if len(kept) < len(rows):
        notes.append(f"{what}: {len(rows) - len(kept)} image row(s) of {len(rows)} left out (the base reads no images)")
    return kept


def evaluate_model(model: LlavaLite, sets: dict, out: Path | None, model_id: str, max_new_tokens: int = 16,
                   batch_size: int = 32, notes: list[str] | None = None, judge=None, text_only: bool = False) -> dict:
    """Every set given in `sets` (keys as `evaluate`'s arguments) on one loaded model; `text_only`
    (always for a plain LM): only the rows and conversations without images."""
    notes = [] if notes is None else notes
    text_only = text_only or not sees_images(model)
    report: dict = {}
    assistant = Assistant(model)
    folder = sets.get("image_folder")
    for kind in ("vqa", "pope", "mc"):
        if not sets.get(kind):
            continue
        rows = _text_rows(read_questions(sets[kind]), text_only, kind, notes)
        if not rows:
            continue
        replies = answer_questions(assistant, rows, folder or str(Path(sets[kind]).parent), kind, max_new_tokens,
                                   batch_size, suffix=sets.get("suffix", True))
        if out:
            write_llava_answers(rows, replies, out / f"{kind}_llava_answers.jsonl", model_id)
        if kind == "vqa" and all("answer" in r for r in rows):  # our own sets: exact match, as before
            report |= vqa_accuracy(assistant, rows, folder, out / "vqa_answers.jsonl" if out else None, replies=replies)
        report |= score(kind, rows, replies)
    if sets.get("choice"):
        rows = _text_rows(read_questions(sets["choice"], "choice"), text_only, "choice", notes)
        if rows:
            report |= choice_accuracy(model, rows, folder or str(Path(sets["choice"]).parent), batch_size,
                                      out / "choice_predictions.jsonl" if out else None)
    if sets.get("instructions"):
        convs = read_conversations(sets["instructions"], sets.get("instructions_format", "auto"), folder)
        convs = _text_rows(convs, text_only, "instructions", notes, images=lambda c: c.images)
        if convs:
            report["instruction_ppl"] = conversations_perplexity(model, convs)
    if sets.get("text_tasks"):
        report["text_task_ppl"] = response_perplexity(model, sets["text_tasks"], "auto")
    if sets.get("general"):
        report["general_ppl"] = text_perplexity(model, sets["general"])
    if "instruction_ppl" in report and "general_ppl" in report:
        report["general_to_instruction_ppl_ratio"] = report["general_ppl"] / report["instruction_ppl"]
    if judge is not None and sets.get("judge_questions"):
        report |= judge_model(judge, assistant, sets, out, model_id, notes, text_only)
    return report


def judge_model(judge, assistant: Assistant, sets: dict, out: Path | None, model_id: str, notes: list[str],
                text_only: bool = False) -> dict:
    """Open answers to the judge questions, graded 1-10, and (with a reference model's LLaVA answer
    file) the pairwise win rate against it."""
    rows = _text_rows(read_questions(sets["judge_questions"]), text_only, "judge", notes)
    folder = sets.get("image_folder") or str(Path(sets["judge_questions"]).parent)
    answers = answer_questions(assistant, rows, folder, "vqa", sets.get("judge_max_new_tokens", 256), suffix=False)
    if out:
        write_llava_answers(rows, answers, out / "judge_llava_answers.jsonl", model_id)
    report = {k: v for k, v in grade(judge, rows, answers).items() if k != "judge_ratings"}
    if sets.get("judge_reference"):
        ref = _reference_answers(sets["judge_reference"])
        missing = [r["question_id"] for r in rows if r["question_id"] not in ref]
        if missing:
            raise DataError(f"{sets['judge_reference']}: no reference answer for question_id(s) {missing[:5]}",
                            "no reference answer")
        report |= win_rate(judge, rows, answers, [ref[r["question_id"]] for r in rows])
    return report


def _reference_answers(path: str) -> dict:
    """question_id -> text of a LLaVA answer JSONL (a reference model's answers)."""
    ref = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
            if row is not None:
                ref[row["question_id"]] = row["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise DataError(f"{path}:{n}: not a LLaVA answer line; write one JSON object per line with question_id and "
                            "text", "bad answer") from None
    return ref


def evaluate(model_dir: str, vqa: str | None = None, image_folder: str | None = None,
             instructions: str | None = None, instructions_format: str = "auto", general: str | None = None,
             out_dir: str | None = None, max_new_tokens: int = 16, batch_size: int = 32, *, pope: str | None = None,
             mc: str | None = None, choice: str | None = None, text_tasks: str | None = None, base: str | None = None,
             judge=None, judge_questions: str | None = None, judge_reference: str | None = None,
             judge_max_new_tokens: int = 256, suffix: bool = True, device: str | None = None,
             dtype: str | None = None) -> dict:
    """Evaluate a model directory on every set given; with `base`, the base model too, and a
    base-vs-tuned table (report.json "comparison", report.md). `judge`: a teacher (see judge.py)."""
    sets = dict(vqa=vqa, pope=pope, mc=mc, choice=choice, image_folder=image_folder, instructions=instructions,
                instructions_format=instructions_format, general=general, text_tasks=text_tasks, suffix=suffix,
                judge_questions=judge_questions, judge_reference=judge_reference,
                judge_max_new_tokens=judge_max_new_tokens)
    judge = counting(judge) if judge is not None else None
    device = device or default_device()
    model = load_model(model_dir, device=device, dtype=dtype)
    report: dict = {"model": str(model_dir)}
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    report |= evaluate_model(model, sets, out, Path(model_dir).name, max_new_tokens, batch_size, judge=judge)
    if base:
        notes: list[str] = []
        base_model = load_model(base, like=model, device=device, dtype=dtype)
        base_out = out / "base" if out else None
        if base_out:
            base_out.mkdir(parents=True, exist_ok=True)
        base_report = evaluate_model(base_model, sets, base_out, Path(base).name, max_new_tokens, batch_size, notes,
                                     judge=judge)
        tuned = report
        if notes:  # the base saw the text rows only: score the tuned model on the same rows
            judged_all = not any(n.startswith("judge:") for n in notes)  # then the judge need not be paid twice
            tuned = evaluate_model(model, sets, None, Path(model_dir).name, max_new_tokens, batch_size,
                                   judge=None if judged_all else judge, text_only=True)
            if judged_all:
                tuned |= {k: v for k, v in report.items() if k.startswith("judge_")}
        report["base"] = {"model": str(base), **base_report}
        report["comparison"] = comparison(tuned, base_report)
        report["comparison_notes"] = notes
        if out:
            (out / "report.md").write_text(markdown(report["comparison"], str(model_dir), str(base), notes))
    if judge is not None:
        report["judge_requests"] = judge.requests
        report["judge_failed_requests"] = judge.failures
    if out:
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report
