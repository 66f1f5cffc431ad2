"""Pre-train a tiny LlamaForCausalLM on the world's text (CPU, seconds).

Documents (captions, caption + Q&A, ChatML dialogues, ChatML text tasks) are tokenised, joined
with `</s>` and packed into fixed-length rows; the loss is plain next-token prediction on every
token. With the preset's `lm.lookup` ({per_image, steps}: the lookup curriculum), the first `steps`
steps train on short lookup documents alone (`corpus.lookup_documents`) and the rest on the world's
text, under one learning-rate schedule: a tiny LM learns to answer from its context there first.
Held-out report: loss/perplexity on test-split world text and test text tasks, and what the LM reads
from a caption (`caption_reading`: stage 2's test questions with the image's captions in
place of its tokens, per question type, against another image's captions).
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig

from llava_lite.config import ConfigError
from llava_lite.demo.corpus import (
    CORPUS_VERSION,
    assert_no_heldout,
    chatml,
    lookup_documents,
    text_task_documents,
    world_documents,
)
from llava_lite.demo.eval_sets import vqa_questions
from llava_lite.demo.presets import demo_dtype, finished, mark_finished, resolve, world_fingerprint
from llava_lite.log import logger
from llava_lite.model.random import random_lm
from llava_lite.train.optim import cosine_with_warmup

ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "intermediate_size", "max_position_embeddings")


def pack(docs: list[str], tokenizer, seq_len: int, seed: int) -> torch.Tensor:
    """Shuffle, tokenise, join with eos, cut into rows. # -> [rows, seq_len]"""
    docs = list(docs)
    random.Random(seed).shuffle(docs)
    ids: list[int] = []
    for row in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids += row + [tokenizer.eos_token_id]
    n = len(ids) // seq_len
    if n == 0:
        raise ConfigError(f"only {len(ids)} tokens of text: fewer than one row of {seq_len}; "
                          "lower the preset's lm.seq_len or grow its world")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def mean_loss(model, rows: torch.Tensor, batch: int = 8) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(rows), batch):
        x = rows[i:i + batch]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=demo_dtype() == "bfloat16"):
            loss = model(input_ids=x, labels=x).loss.float()
        n = x.numel() - len(x)
        total, count = total + loss.item() * n, count + n
    return total / max(count, 1)


def reading_questions(world_dir: Path, n: int = 100, seed: int = 0) -> list[dict]:
    """The VQA test questions (`eval_sets.vqa_questions`) about the first `n` test images, each with that image's
    captions ("own") and with the next image's ("other"): the image tokens' place taken by text.
    # -> [{type, own, other, answer}]"""
    pairs = vqa_questions(world_dir, seed, n)
    scenes = list({s.file_name: s for s, _ in pairs}.values())
    after = {a.file_name: b for a, b in zip(scenes, scenes[1:] + scenes[:1])}

    def ask(scene, question: str) -> str:
        turn = {"role": "user", "content": " ".join(scene.captions) + "\n" + question}
        return chatml([turn]) + "<|im_start|>assistant\n"

    return [{"type": qa["type"], "answer": qa["answer"], "own": ask(s, qa["question"]),
             "other": ask(after[s.file_name], qa["question"])} for s, qa in pairs]


@torch.no_grad()
def answer_argmax(model, tokenizer, prompts: list[str], answers: list[str], batch: int = 32) -> list[tuple]:
    """Per row, (the LM's argmax token at each position of `answer` + <|im_end|>, that answer's ids), the answer
    teacher-forced: the two are equal exactly when greedy decoding would produce the answer. Rows are padded on
    the right: a causal LM's outputs at a row's own positions do not depend on what follows them, so a batch
    gives the one-by-one result."""
    model.eval()
    rows = [(tokenizer(p, add_special_tokens=False)["input_ids"], tokenizer(a + "<|im_end|>", add_special_tokens=False)
             ["input_ids"]) for p, a in zip(prompts, answers)]
    out = []
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        width = max(len(p) + len(a) for p, a in chunk)
        x = torch.tensor([p + a + [tokenizer.pad_token_id] * (width - len(p) - len(a)) for p, a in chunk])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=demo_dtype() == "bfloat16"):
            hidden = model.get_decoder()(input_ids=x).last_hidden_state  # the vocabulary head on answers only
            out += [(model.get_output_embeddings()(hidden[j, len(p) - 1:len(p) + len(a) - 1]).argmax(-1).tolist(), a)
                    for j, (p, a) in enumerate(chunk)]
    return out


def answers_right(model, tokenizer, prompts: list[str], answers: list[str]) -> list[bool]:
    return [pred == ids for pred, ids in answer_argmax(model, tokenizer, prompts, answers)]


def caption_reading(model, tokenizer, world_dir: Path, n: int = 100, seed: int = 0) -> dict:
    """What the LM reads from text in stage 2's question format: each question's exact match with the image's
    own captions in context, per question type, against the same questions with another image's captions
    (answer priors alone). A gap near 0 means stage 2 must build the lookup on image tokens from nothing."""
    rows = reading_questions(Path(world_dir), n, seed)
    answers = [r["answer"] for r in rows]
    own = answers_right(model, tokenizer, [r["own"] for r in rows], answers)
    other = answers_right(model, tokenizer, [r["other"] for r in rows], answers)
    types = sorted({r["type"] for r in rows})
    by_type = lambda hits: {t: round(sum(h for h, r in zip(hits, rows) if r["type"] == t) /
                                     sum(r["type"] == t for r in rows), 3) for t in types}
    return {"reading": round(sum(own) / len(rows), 3), "reading_other_captions": round(sum(other) / len(rows), 3),
            "reading_by_type": by_type(own), "reading_other_captions_by_type": by_type(other)}


def pretrain_lm(world_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path,
                preset: str | dict = "full") -> dict:
    """Train, `save_pretrained` (model + tokenizer) into `out_dir`, report held-out loss.
    Skipped when `out_dir` already holds a model finished with the same config."""
    world_dir, out_dir = Path(world_dir), Path(out_dir)
    p = resolve(preset)
    c = p["lm"]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = {"lm": c, "seed": p["seed"], "world": world_fingerprint(world_dir), "vocab": len(tokenizer),
           "corpus": CORPUS_VERSION, "bf16": demo_dtype() == "bfloat16"}
    if (done := finished(out_dir, cfg)) is not None:
        logger.info(f"[lm] reusing {out_dir}")
        return done
    t0 = time.time()
    torch.manual_seed(p["seed"] + c.get("init_seed", 0))  # lm.init_seed (`llava-lite demo --lm-seed`): the init only
    lookup = c.get("lookup")  # the lookup curriculum: lookup documents alone first, then the world's text
    if lookup and not 0 < lookup["steps"] <= c["steps"]:
        raise ConfigError(f"lm.lookup.steps {lookup['steps']} must be in 1..lm.steps ({c['steps']})")
    train_docs = world_documents(world_dir, "train", p["seed"]) + text_task_documents(world_dir, "train")
    assert_no_heldout(train_docs, "lm pre-training text")
    rows = pack(train_docs, tokenizer, c["seq_len"], p["seed"])
    phases = [(rows, c["steps"])]
    if lookup:
        docs = lookup_documents(world_dir, lookup["per_image"], p["seed"])
        assert_no_heldout(docs, "lookup documents")
        first = pack(docs, tokenizer, c["seq_len"], p["seed"])
        phases = [(first, lookup["steps"]), (rows, c["steps"] - lookup["steps"])]
    eval_world = pack(world_documents(world_dir, "test", p["seed"] + 1), tokenizer, c["seq_len"], 0)[:32]
    eval_text = pack(text_task_documents(world_dir, "test"), tokenizer, c["seq_len"], 0)[:32]
    special = {k: tokenizer.convert_tokens_to_ids(t) for k, t in
               (("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>"))}
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True, **{k: c[k] for k in ARCH_KEYS}, **special)
    model = random_lm(config)  # the package's one random-model builder (same weights as LlamaForCausalLM(config))
    decay = [q for q in model.parameters() if q.ndim >= 2]
    no_decay = [q for q in model.parameters() if q.ndim < 2]
    groups = [{"params": decay, "weight_decay": c["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=c["lr"], betas=(0.9, 0.95))
    sched = cosine_with_warmup(opt, max(1, int(c["steps"] * c["warmup"])), c["steps"], floor=0.1)
    gen = torch.Generator().manual_seed(p["seed"])
    model.train()
    bar = tqdm(total=c["steps"], desc="lm pretrain", unit="step")
    for data, steps in phases:
        order = torch.randperm(len(data), generator=gen)
        for step in range(steps):
            start = (step * c["batch_size"]) % len(data)
            if start + c["batch_size"] > len(data):  # next epoch
                order, start = torch.randperm(len(data), generator=gen), 0
            x = data[order[start:start + c["batch_size"]]]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=demo_dtype() == "bfloat16"):
                loss = model(input_ids=x, labels=x).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    train_s = time.time() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=special["bos_token_id"], pad_token_id=special["pad_token_id"],
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|im_end|>"), special["eos_token_id"]])
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    lw, lt = mean_loss(model, eval_world), mean_loss(model, eval_text)
    metrics = {"train_loss": round(loss.item(), 4), "heldout_world_loss": round(lw, 4),
               "heldout_world_ppl": round(math.exp(lw), 3),
               "heldout_text_tasks_loss": round(lt, 4), "heldout_text_tasks_ppl": round(math.exp(lt), 3),
               **caption_reading(model, tokenizer, world_dir, seed=p["seed"])}
    info = {"params_millions": round(sum(q.numel() for q in model.parameters()) / 1e6, 2), "steps": c["steps"],
            "train_tokens": c["steps"] * c["batch_size"] * c["seq_len"], "corpus_tokens": rows.numel(),
            "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1), "metrics": metrics}
    logger.info(f"[lm] {info['params_millions']}M params, {c['steps']} steps in {train_s:.1f} s; " +
                ", ".join(f"{k} {v}" for k, v in metrics.items()))
    return mark_finished(out_dir, cfg, info)
