"""GGUF export of a Llama-3-style LM: its split regex (llama.cpp's `llama-bpe` pre-tokenizer) and its llama3
rope scaling (written as `rope_freqs.weight`), checked by llama.cpp on a text-only export."""
from __future__ import annotations

import gguf
import pytest
import torch
from helpers.llama_cpp import compare, load
from helpers.tiny import CORPUS, LLAMA3, SPECIALS
from transformers import LlamaConfig, PreTrainedTokenizerFast

from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.data.conversation import Message
from llava_lite.interop import gguf_lm
from llava_lite.interop.export import write_gguf
from llava_lite.model.llava import LlavaLite
from llava_lite.model.random import random_lm

# long enough that positions past the rope's original context (16 here) matter
PROMPT = ("Count from one to twenty: one, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, "
          "thirteen, fourteen, fifteen, sixteen, seventeen, eighteen, nineteen, and then?")


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(gguf_lm.LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = SPECIALS["llama3"]
    tok.train_from_iterator(CORPUS + [PROMPT], trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1],
                                   pad_token="<pad>", additional_special_tokens=specials[3:])
    fast.chat_template = LLAMA3
    return fast


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama3")
    tok = llama3_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 16})
    random_lm(cfg).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    return LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(root / "lm"))).eval()


def ask(model, path) -> tuple[bool, float]:
    llm = load(path)
    try:
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], tokenize=False,
                                                   add_generation_prompt=True)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == model.tokenizer(
            text, add_special_tokens=False)["input_ids"]
        return compare(model, llm, [Message("user", PROMPT)], [{"role": "user", "content": PROMPT}], max_tokens=6)
    finally:
        llm.close()


def test_llama3_tokenizer_and_rope_scaling(model, tmp_path, monkeypatch):
    [path] = write_gguf(model, tmp_path / "right", "f32", text_only=True)
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["tokenizer.ggml.pre"].contents() == "llama-bpe"
    factors = next(t for t in reader.tensors if t.name == "rope_freqs.weight").data
    assert factors[0] < 2 and abs(factors[-1] - 8) < 1e-5  # the highest frequency barely scaled, low ones by 8
    same, worst = ask(model, path)
    # the same export with the scaling left out: llama.cpp then rotates low frequencies 8x too fast
    monkeypatch.setattr(gguf_lm, "rope_factors", lambda lm: torch.ones_like(lm.get_decoder().rotary_emb.inv_freq))
    [unscaled] = write_gguf(model, tmp_path / "unscaled", "f32", text_only=True)
    _, wrong = ask(model, unscaled)
    print(f"\nLlama-3 style LM through llama.cpp: identical answer {same}, max |logit diff| {worst:.2e} "
          f"(without rope_freqs: {wrong:.2e})")
    assert same and worst < 1e-3 and wrong > 100 * worst
