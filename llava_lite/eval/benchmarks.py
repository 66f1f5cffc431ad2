"""Generated-answer benchmarks in LLaVA's formats: short-answer VQA, POPE and multiple-choice letters.

    rows = read_questions("llava_pope_test.jsonl")  # scorers.py
    replies = answer_questions(assistant, rows, "images/", "pope")
    write_llava_answers(rows, replies, "answers.jsonl", model_id="my-run")  # LLaVA's scripts read it
    score("pope", rows, replies)  # {"pope_f1": ..., "pope_yes_ratio": ...}

Prompts are built as LLaVA-1.5's eval loaders build them: the question, then (multiple choice)
the options as "A. text" lines, then the benchmark's instruction on its own line (never twice if
the file already holds it), with the image first. Ground truth, when a file carries it: `answer`
(one reference; VQA exact match, POPE "yes"/"no", MC letter or 0-based index) or `answers` (VQAv2's
ten human answers, soft accuracy).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from tqdm.auto import tqdm

from llava_lite.constants import IMAGE_TOKEN, SHORT_ANSWER
from llava_lite.data.conversation import Message
from llava_lite.data.images import resolve_image
from llava_lite.eval.scorers import (
    LETTERS,
    MC_ANSWER,
    answer_record,
    mc_accuracy,
    parse_letter,
    pope_metrics,
    render_options,
    vqa_score,
    with_suffix,
)

KINDS = ("vqa", "pope", "mc")


def options_of(row: dict) -> list[str] | None:
    return row.get("options") or row.get("choices")


def build_prompt(row: dict, kind: str, suffix: bool = True) -> str:
    """The user turn for one question: image placeholder first, options, then the instruction."""
    text = row["text"]
    if kind == "mc" and options_of(row):
        text = render_options(text, options_of(row))
    if suffix:
        text = with_suffix(text, MC_ANSWER if kind == "mc" else SHORT_ANSWER)
    if row.get("image") and IMAGE_TOKEN not in text:
        text = IMAGE_TOKEN + "\n" + text
    return text


def image_path(folder: str | Path, ref: str, where: str = "") -> str:
    """An image named by a question file, confined to the image folder (an absolute path, a `..`
    out of it or an outward symlink is a DataError): a question file is somebody else's."""
    return resolve_image(folder, ref, where=where)


def answer_questions(assistant, rows: list[dict], image_folder: str | Path | None, kind: str = "vqa",
                     max_new_tokens: int = 16, batch_size: int = 32, suffix: bool = True) -> list[str]:
    """Greedy replies, `batch_size` questions per decoding batch (the same as one at a time)."""
    if kind not in KINDS:
        raise ValueError(f"benchmark kind {kind!r} is not one of {KINDS}")
    replies: list[str] = []
    bar = tqdm(total=len(rows), desc=kind, leave=False)
    for start in range(0, len(rows), batch_size):
        chats = []
        for row in rows[start:start + batch_size]:
            where = f"question {row['question_id']!r}"
            images = [image_path(image_folder or ".", row["image"], where)] if row.get("image") else []
            chats.append(([Message("user", build_prompt(row, kind, suffix))], images))
        replies += assistant.reply_batch(chats, max_new_tokens=max_new_tokens)
        bar.update(len(chats))
    bar.close()
    return replies


def write_llava_answers(rows: list[dict], replies: list[str], path: str | Path, model_id: str) -> None:
    """LLaVA's answer JSONL, one `answer_record` per question, in question order."""
    with open(path, "w", encoding="utf-8") as out:
        for row, text in zip(rows, replies):
            out.write(json.dumps(answer_record(row, text, model_id)) + "\n")


def _by_category(rows: list[dict], values: list) -> dict[str, list]:
    groups: dict[str, list] = defaultdict(list)
    for row, v in zip(rows, values):
        groups[row.get("category", "all")].append(v)
    return dict(sorted(groups.items()))


def _mc_truth(row: dict) -> str | int:
    answer = row["answer"]
    return int(answer) if isinstance(answer, int) or str(answer).isdigit() else str(answer)


def _n_options(row: dict) -> int:
    """Options in the question: its `options` list, else the "A. ..." lines already in the text."""
    if options_of(row):
        return len(options_of(row))
    lines = [ln.strip() for ln in row["text"].splitlines()]
    n = 0
    while n < len(LETTERS) and any(ln.startswith(f"{LETTERS[n]}.") for ln in lines):
        n += 1
    return max(n, 2)


def score(kind: str, rows: list[dict], replies: list[str]) -> dict:
    """The benchmark's numbers over the rows that carry ground truth (none: an empty dict)."""
    if kind == "vqa":
        pairs = [(r, p) for r, p in zip(rows, replies) if "answers" in r or "answer" in r]
        if not pairs:
            return {}
        scores = [vqa_score(p, r.get("answers") or r["answer"]) for r, p in pairs]
        cats = _by_category([r for r, _ in pairs], scores)
        return {"vqa_soft_accuracy": sum(scores) / len(scores),
                "vqa_soft_accuracy_by_type": {k: sum(v) / len(v) for k, v in cats.items()}}
    if kind == "pope":
        pairs = [(r, p) for r, p in zip(rows, replies) if "answer" in r]
        if not pairs:
            return {}
        out = {f"pope_{k}": v for k, v in pope_metrics([p for _, p in pairs], [r["answer"] for r, _ in pairs]).items()}
        out["pope_questions"] = len(pairs)
        out["pope_by_category"] = {
            c: pope_metrics([p for r, p in pairs if r.get("category", "all") == c],
                            [r["answer"] for r, _ in pairs if r.get("category", "all") == c])
            for c in sorted({r.get("category", "all") for r, _ in pairs})}
        return out
    if kind == "mc":
        pairs = [(r, p) for r, p in zip(rows, replies) if "answer" in r]
        if not pairs:
            return {}
        acc = mc_accuracy([p for _, p in pairs], [_mc_truth(r) for r, _ in pairs], [_n_options(r) for r, _ in pairs])
        unparsed = sum(parse_letter(p, _n_options(r)) is None for r, p in pairs)
        chance = sum(1 / _n_options(r) for r, _ in pairs) / len(pairs)
        return {"mc_accuracy": acc, "mc_questions": len(pairs), "mc_unparsed": unparsed, "mc_chance": chance}
    raise ValueError(f"benchmark kind {kind!r} is not one of {KINDS}")
