"""Multiple choice by log-likelihood (MMLU style), for text and for images.

    rows = read_questions("mc.jsonl", "choice")  # {"question", "choices": [...], "answer": 1 | "B" | "text", "image"?}
    choice_accuracy(model, rows, image_folder)  # {"choice_accuracy": ..., "choice_accuracy_norm": ...}

Each option is rendered as the assistant's answer to the question (the same rendering as
training) and scored by the log-likelihood of its response tokens: the option's text and the
end-of-turn token, the tokens training supervises. The end-of-turn token makes the option a
complete answer, so "Paris" is not rewarded for being the start of "Paris, Texas". The model picks
the option with the highest sum (raw) and with the highest sum per byte of option text
(length-normalised, lm-evaluation-harness's acc_norm), which does not favour short options.
All options of several questions go through one forward pass (`batch_size` rows).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, DataError, Message
from llava_lite.data.dataset import Collator
from llava_lite.data.loader import dataset_for


@torch.no_grad()
def response_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each row's supervised tokens [B] and their number [B]. The LM head
    runs only at supervised positions, as in training."""
    device = model.device
    ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
    pixels = batch["pixel_values"].to(device) if batch["pixel_values"] is not None else None
    sizes = batch.get("image_sizes")
    embeds = model.embed(ids, pixels, image_sizes=None if sizes is None else sizes.to(device))
    hidden = model.lm.get_decoder()(inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(device),
                                    use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != IGNORE_INDEX  # [B, T-1]
    logits = model.lm.get_output_embeddings()(hidden[:, :-1][keep]).float()  # [S, V]
    token_lp = -F.cross_entropy(logits, targets[keep], reduction="none")  # [S]
    rows = keep.nonzero()[:, 0]
    total = torch.zeros(ids.shape[0], device=device).index_add_(0, rows, token_lp)
    return total.cpu(), keep.sum(1).cpu()


def option_conversations(row: dict, image_folder: str | Path | None) -> list[Conversation]:
    from llava_lite.eval.benchmarks import image_path

    prompt = row["question"]
    images = []
    if row.get("image"):
        images = [image_path(image_folder or ".", row["image"], f"choice question {row['question']!r:.40}")]
        if IMAGE_TOKEN not in prompt:
            prompt = IMAGE_TOKEN + "\n" + prompt
    return [
        Conversation(
            [Message("user", prompt), Message("assistant", c)],
            list(images),
            source=f"choice question {row['question'][:40]!r}, option {i}",
        )
        for i, c in enumerate(row["choices"])
    ]


def score_options(model, rows: list[dict], image_folder: str | Path | None = None, batch_size: int = 16,
                  max_length: int = 2048) -> list[list[tuple[float, int]]]:
    """(log-likelihood, response tokens) of every option of every question."""
    convs = [c for row in rows for c in option_conversations(row, image_folder)]
    ds = dataset_for(model, convs, max_length, "chat", model.cfg.system_prompt)
    collate = Collator(model.tokenizer.pad_token_id)
    flat: list[tuple[float, int]] = []
    model.eval()
    for start in range(0, len(ds), batch_size):
        samples = [ds[i] for i in range(start, min(start + batch_size, len(ds)))]
        for s, conv in zip(samples, convs[start:]):
            if s.skipped:  # an option is never dropped silently: the accuracy would be over other options
                why = s.reject.message if s.reject else f"longer than max_length={max_length}"
                raise DataError(f"{conv.where}: cannot be scored: {why}", s.reject.reason if s.reject else "too long")
        total, count = response_logprobs(model, collate(samples))
        flat += list(zip(total.tolist(), count.tolist()))
    out, i = [], 0
    for row in rows:
        out.append(flat[i:i + len(row["choices"])])
        i += len(row["choices"])
    return out


def choice_accuracy(model, rows: list[dict], image_folder: str | Path | None = None, batch_size: int = 16,
                    predictions_path: str | Path | None = None) -> dict:
    scores = score_options(model, rows, image_folder, batch_size)
    raw, norm = [], []
    out = open(predictions_path, "w", encoding="utf-8") if predictions_path else None
    for row, opts in zip(rows, scores):
        lp = [s for s, _ in opts]
        per_byte = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(lp, row["choices"])]
        pick, pick_norm = _argmax(lp), _argmax(per_byte)
        raw.append(pick == row["answer_index"])
        norm.append(pick_norm == row["answer_index"])
        if out:
            out.write(json.dumps({"question": row["question"], "answer_index": row["answer_index"], "pick": pick,
                                  "pick_norm": pick_norm, "logprobs": lp}) + "\n")
    if out:
        out.close()
    n = len(rows)
    report = {"choice_accuracy": sum(raw) / n, "choice_accuracy_norm": sum(norm) / n, "choice_questions": n,
              "choice_chance": sum(1 / len(r["choices"]) for r in rows) / n}
    text = [i for i, r in enumerate(rows) if not r.get("image")]
    if text:  # what a text-only base can be compared on
        report |= {
            "choice_text_accuracy": sum(raw[i] for i in text) / len(text),
            "choice_text_accuracy_norm": sum(norm[i] for i in text) / len(text),
            "choice_text_questions": len(text),
        }
    return report


def _argmax(values: list[float]) -> int:
    best = max(values)
    return next(i for i, v in enumerate(values) if v == best or (math.isnan(best) and math.isnan(v)))
