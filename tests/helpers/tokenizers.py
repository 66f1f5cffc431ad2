"""Tiny tokenizers as the package loads them, and the supervised spans of a rendered sample."""
from __future__ import annotations

from helpers.tiny import make_tokenizer
from llava_lite.constants import IGNORE_INDEX
from llava_lite.model.llava import load_tokenizer


def saved_tokenizer(kind, tmp_path):
    """The tiny `kind` tokenizer saved to tmp_path and loaded back as LlavaLite loads one (+ <image>)."""
    tok = make_tokenizer(kind)
    tok.save_pretrained(tmp_path)
    return load_tokenizer(str(tmp_path))


def supervised_runs(r):
    """Contiguous runs of supervised token ids."""
    runs, cur = [], []
    for i, lab in zip(r.input_ids, r.labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    return runs + ([cur] if cur else [])
