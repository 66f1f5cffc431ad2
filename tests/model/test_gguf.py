"""GGUF LMs: conversion to a plain HF directory, checked on a real LLaMA checkpoint (SmolLM2-135M-Instruct)."""
from __future__ import annotations

import logging
import math
import os
import sys
import time

import pytest
import torch
from helpers.smollm2 import require_smollm2
from helpers.tokenizers import supervised_runs
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.render import render
from llava_lite.demo.smol import ENGLISH_TEXT
from llava_lite.model.gguf import cache_key, convert_gguf, quant_summary


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    return tok, model


def test_converted_directory_matches_the_gguf_model(smollm2_dir, smol):
    path = require_smollm2()
    t = time.perf_counter()
    ref = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    print(f"\ngguf load (dequantize) {time.perf_counter() - t:.1f}s")
    tok, model = smol
    assert "quantization_config" not in model.config.to_dict()
    assert sorted(os.listdir(smollm2_dir)) == ["chat_template.jinja", "config.json", "generation_config.json",
                                               "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ids = tok("A chat between a curious user and an assistant about the weather in Paris.",
              return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = ref(ids).logits, model(ids).logits
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5)


def test_second_call_is_a_cache_hit(smollm2_dir, caplog):
    path = require_smollm2()
    with caplog.at_level(logging.WARNING, logger="llava_lite.model.gguf"):
        t = time.perf_counter()
        again = convert_gguf(str(path), cache_dir=smollm2_dir.parent)
        took = time.perf_counter() - t
    assert again == smollm2_dir and took < 1.0
    assert not caplog.records  # nothing converted, nothing logged
    assert [p.name for p in smollm2_dir.parent.iterdir()] == [smollm2_dir.name]  # no staging leftovers
    assert "Q4_1 (file type)" in quant_summary(path)


def test_cache_key_follows_size_and_mtime(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 10)
    k = cache_key(f)
    assert cache_key(f) == k
    os.utime(f, ns=(0, 10**18))
    assert cache_key(f) != k


def test_missing_gguf_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(RuntimeError) as e:
        convert_gguf(str(tmp_path / "m.gguf"), cache_dir=tmp_path)
    assert "pip install llava-lite[gguf]" in str(e.value) and "\n" not in str(e.value)
    assert e.value.__cause__ is None and e.value.__context__ is None


def test_render_with_smollm2_chat_template(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert "<|im_start|>" in tok.chat_template and tok.is_fast
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    answers = ["The circle is red.", "Yes, there are 3 of them!"]
    conv = Conversation([Message("user", "<image>\nWhat colour is the circle?"), Message("assistant", answers[0]),
                         Message("user", "Are there more?"), Message("assistant", answers[1])],
                        ["a.png"], id="s", source="test")
    r = render(conv, tok, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_len=4, max_length=4096)
    assert [tok.decode(x) for x in supervised_runs(r)] == [a + "<|im_end|>" for a in answers]
    text = tok.decode(r.input_ids)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # its default system
    assert r.input_ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 4 and r.num_images == 1


def test_greedy_answer_knows_paris(smol):
    tok, model = smol
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=24, do_sample=False,
                             eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"))
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    print(f"\nSmolLM2 greedy: {answer!r}")
    assert "Paris" in answer


def test_general_text_perplexity(smol):
    tok, model = smol
    ids = tok(ENGLISH_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss.item()
    ppl = math.exp(loss)
    print(f"\nSmolLM2-135M-Instruct (Q4_1 dequantized) perplexity on {ids.shape[1]} tokens of general English: "
          f"{ppl:.2f}")
    assert 1 < ppl < 60
