"""Base vs tuned, side by side: what a run cost the base model (`llava-lite eval --base BASE`).

BASE is a llava-lite model directory or a plain causal-LM directory (or hub id). A plain LM is
wrapped as a text-only LlavaLite (`TextOnlyModel`) that shares the tuned model's tokenizer: the
tuned tokenizer is the base one plus `<image>` (and a template's markers), so the same text gives
the same token ids and both perplexities are over the same tokens. It answers text rows only;
image rows are left out of its numbers and the table says so.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from llava_lite.config import ConfigError, ModelConfig
from llava_lite.model.llava import CONFIG_NAME, LlavaLite

# (report key, row label, higher is better)
ROWS = [
    ("instruction_ppl", "instruction perplexity (response tokens)", False),
    ("general_ppl", "general-text perplexity", False),
    ("general_to_instruction_ppl_ratio", "general / instruction perplexity", False),
    ("text_task_ppl", "text-task perplexity (response tokens)", False),
    ("choice_accuracy", "multiple choice, log-likelihood", True),
    ("choice_accuracy_norm", "multiple choice, log-likelihood per byte", True),
    ("choice_text_accuracy", "multiple choice (text rows), log-likelihood", True),
    ("mc_accuracy", "multiple choice, generated letter", True),
    ("vqa_accuracy", "VQA exact match", True),
    ("vqa_soft_accuracy", "VQA soft accuracy (VQAv2)", True),
    ("pope_f1", "POPE F1", True),
    ("pope_yes_ratio", "POPE yes-ratio", None),
    ("judge_score", "judge score (1-10)", True),
    ("judge_win_rate", "judge win rate vs reference", True),
]


class _NoVision(nn.Module):
    num_patches = 1  # never used: a text-only model renders no image placeholder
    anyres = None

    def image_to_pixels(self, image):
        raise ValueError("the base is a plain language model: it cannot read images (image rows are left out)")


class TextOnlyModel(LlavaLite):
    """A plain causal LM behind LlavaLite's interface (forward with labels, embed, generate), text only."""

    sees_images = False

    def __init__(self, lm: nn.Module, tokenizer, cfg: ModelConfig):
        super().__init__(_NoVision(), nn.Identity(), lm, tokenizer, cfg)

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device


def is_llava_dir(path: str | Path) -> bool:
    """A llava-lite directory, or one `sources.model_dir` imports (llava-hf, LLaVA llava_llama)."""
    from llava_lite.interop.sources import IMPORTED, detect

    return (Path(path) / CONFIG_NAME).is_file() or (Path(path).is_dir() and detect(path) in IMPORTED)


def load_model(path: str | Path, like: LlavaLite | None = None, **kwargs) -> LlavaLite:
    """A llava-lite directory (or a llava-hf / LLaVA one, imported once), or a plain LM wrapped text-only with
    `like`'s tokenizer and prompt mode."""
    if is_llava_dir(path):
        from llava_lite.interop.sources import model_dir

        return LlavaLite.from_pretrained(model_dir(path), **kwargs)
    from llava_lite.model.lm import load_lm, load_tokenizer

    tokenizer = like.tokenizer if like is not None else load_tokenizer(str(path))
    if like is not None:
        _check_same_vocabulary(load_tokenizer(str(path)), tokenizer, path)
    cfg = ModelConfig(lm=str(path), dtype=kwargs.get("dtype") or (like.cfg.dtype if like is not None else "float32"))
    device = kwargs.get("device")
    model = TextOnlyModel(load_lm(cfg.lm, cfg, len(tokenizer), device=device), tokenizer, cfg)
    if like is not None:
        cfg.render_mode, cfg.system_prompt = like.cfg.render_mode, like.cfg.system_prompt
    return model.to(device or "cpu").eval()


def _check_same_vocabulary(base_tok, tuned_tok, path) -> None:
    """Every base token keeps its id in the tuned tokenizer, else perplexities are not comparable."""
    tuned = tuned_tok.get_vocab()
    moved = [t for t, i in base_tok.get_vocab().items() if tuned.get(t) != i]
    if moved:
        raise ConfigError(f"--base {path}: its tokenizer differs from the tuned model's ({len(moved)} tokens, e.g. "
                          f"{moved[:3]}); compare against the base the tuned model was trained from")


def sees_images(model) -> bool:
    return getattr(model, "sees_images", True)


def comparison(tuned: dict, base: dict) -> list[dict]:
    """One row per metric both reports have: base, tuned, delta (tuned - base), and for a
    perplexity the ratio tuned / base (above 1: the tuned model lost some of that skill)."""
    rows = []
    for key, label, higher in ROWS:
        b, t = base.get(key), tuned.get(key)
        if not isinstance(b, (int, float)) or not isinstance(t, (int, float)):
            continue
        row = {"metric": key, "label": label, "base": b, "tuned": t, "delta": t - b}
        if key.endswith("_ppl"):
            row["ratio"] = t / b if b else None
        if higher is not None:
            row["better"] = "same" if t == b else ("tuned" if (t > b) == higher else "base")
        rows.append(row)
    return rows


def _fmt(key: str, v) -> str:
    if v is None:
        return "-"
    return f"{v:.1%}" if _is_share(key) else f"{v:.3f}"


def _is_share(key: str) -> bool:
    return "accuracy" in key or key in ("pope_f1", "pope_yes_ratio", "judge_win_rate")


def markdown(rows: list[dict], tuned_name: str, base_name: str, notes: list[str] = ()) -> str:
    lines = [f"# base vs tuned\n\nbase: `{base_name}`  \ntuned: `{tuned_name}`\n",
             "| metric | base | tuned | delta | tuned / base |", "|---|---|---|---|---|"]
    for r in rows:
        delta = f"{r['delta'] * 100:+.1f} pt" if _is_share(r["metric"]) else f"{r['delta']:+.3f}"
        ratio = f"{r['ratio']:.3f}" if r.get("ratio") else ""
        lines.append(
            f"| {r['label']} | {_fmt(r['metric'], r['base'])} | {_fmt(r['metric'], r['tuned'])} | {delta} | {ratio} |"
        )
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
