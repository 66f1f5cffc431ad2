"""`llava-lite eval`: VQA exact-match accuracy, response-token perplexity, general-text perplexity.

VQA questions use LLaVA's question JSONL (`question_id`, `image`, `text`, `category`) plus the
ground truth `answer` (and optionally `unseen_combo`). Perplexities are token-weighted:
exp(sum of CE over supervised tokens / number of supervised tokens).
"""
from __future__ import annotations

import json
import math
import re
import string
from collections import Counter, defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .chat import Assistant
from .data.conversation import IMAGE_PLACEHOLDER, Message
from .data.readers import read_conversations
from .data.dataset import Collator, Sample
from .data.loader import dataset_for
from .model import LlavaLite

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """VQA-style normalisation: lower case, no punctuation or articles, single spaces."""
    text = text.lower().strip().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def read_questions(path: str | Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            for key in ("question_id", "image", "text", "answer"):
                if key not in row:
                    raise ValueError(f"{path}:{n}: question record has no field {key!r}")
            rows.append(row)
    return rows


def chance_accuracy(questions: list[dict]) -> tuple[float, float]:
    """(uniform guess among each category's answers, always answer the category's majority)."""
    by_type: dict[str, Counter] = defaultdict(Counter)
    for q in questions:
        by_type[q.get("category", "all")][normalize_answer(q["answer"])] += 1
    n = len(questions)
    uniform = sum(sum(c.values()) / len(c) for c in by_type.values()) / n
    majority = sum(max(c.values()) for c in by_type.values()) / n
    return uniform, majority


def vqa_accuracy(assistant: Assistant, questions: list[dict], image_folder: str | Path,
                 answers_path: Path | None = None, max_new_tokens: int = 16, batch_size: int = 32) -> dict:
    """Greedy answers, `batch_size` questions per forward pass (the answers one at a time would get,
    up to float rounding in bf16)."""
    hits: dict[str, list[bool]] = defaultdict(list)
    unseen: list[bool] = []
    out = open(answers_path, "w") if answers_path else None
    bar = tqdm(total=len(questions), desc="vqa", leave=False)
    for start in range(0, len(questions), batch_size):
        batch = questions[start:start + batch_size]
        chats = []
        for q in batch:
            prompt = q["text"] if IMAGE_PLACEHOLDER in q["text"] else IMAGE_PLACEHOLDER + "\n" + q["text"]
            chats.append(([Message("user", prompt)], [str(Path(image_folder) / q["image"])]))
        for q, text in zip(batch, assistant.reply_batch(chats, max_new_tokens=max_new_tokens)):
            ok = normalize_answer(text) == normalize_answer(q["answer"])
            hits[q.get("category", "all")].append(ok)
            if q.get("unseen_combo"):
                unseen.append(ok)
            if out:
                out.write(json.dumps({"question_id": q["question_id"], "prompt": q["text"], "text": text,
                                      "answer": q["answer"], "correct": ok}) + "\n")
        bar.update(len(batch))
    bar.close()
    if out:
        out.close()
    everything = [h for v in hits.values() for h in v]
    uniform, majority = chance_accuracy(questions)
    return {
        "vqa_accuracy": sum(everything) / max(1, len(everything)),
        "vqa_accuracy_by_type": {k: sum(v) / len(v) for k, v in sorted(hits.items())},
        "vqa_accuracy_unseen_combos": sum(unseen) / len(unseen) if unseen else None,
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
    ds = dataset_for(model, read_conversations(path, fmt, image_folder), max_length, model.render_mode,
                     model.system_prompt)
    return _perplexity(model, ds, batch_size)


class _TextDataset:
    """Plain text lines as fully supervised samples (no template): language-model perplexity."""

    def __init__(self, lines: list[str], tokenizer, max_length: int):
        self.rows = [tokenizer(line, add_special_tokens=False)["input_ids"][:max_length] for line in lines if line.strip()]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Sample:
        ids = torch.tensor(self.rows[i])
        return Sample(ids, ids.clone(), None, False)


def text_perplexity(model: LlavaLite, path: str, max_length: int = 2048, batch_size: int = 8) -> float:
    lines = Path(path).read_text().splitlines()
    return _perplexity(model, _TextDataset(lines, model.tokenizer, max_length), batch_size)


def evaluate(model_dir: str, vqa: str | None = None, image_folder: str | None = None,
             instructions: str | None = None, instructions_format: str = "auto", general: str | None = None,
             out_dir: str | None = None, max_new_tokens: int = 16, batch_size: int = 32) -> dict:
    model = LlavaLite.from_pretrained(model_dir)
    report: dict = {"model": str(model_dir)}
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    if vqa:
        folder = image_folder or str(Path(vqa).parent)
        report |= vqa_accuracy(Assistant(model), read_questions(vqa), folder,
                               out / "vqa_answers.jsonl" if out else None, max_new_tokens, batch_size)
    if instructions:
        report["instruction_ppl"] = response_perplexity(model, instructions, instructions_format, image_folder)
    if general:
        report["general_ppl"] = text_perplexity(model, general)
    if "instruction_ppl" in report and "general_ppl" in report:
        report["general_to_instruction_ppl_ratio"] = report["general_ppl"] / report["instruction_ppl"]
    if out:
        (out / "report.json").write_text(json.dumps(report, indent=2))
    return report

