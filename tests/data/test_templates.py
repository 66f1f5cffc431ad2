"""LLaVA's conversation templates by name: exact LLaVA texts, labels through the real render, system override."""
from __future__ import annotations

import os
import shutil

import pytest
from helpers.tiny import make_tokenizer
from helpers.tokenizers import supervised_runs
from transformers import AutoTokenizer, LlamaTokenizer

from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.render import render, render_prompt
from llava_lite.data.templates import SYSTEM_PROMPTS, TEMPLATES, set_chat_template

NAMES = list(TEMPLATES)
Q1, A1 = "<image>\nWhat colour is the circle?", "The circle is red."
Q2, A2 = "Are there more?", "Yes, there are 3 of them!"
VICUNA_SYS, LLAMA2_SYS = SYSTEM_PROMPTS["vicuna_v1"], SYSTEM_PROMPTS["llava_llama_2"]

# LLaVA's Conversation.get_prompt() for (Q1, A1, Q2, A2), written out by hand, with the bos the
# LLaVA tokenizer call prepends; <s> and </s> are the tiny tokenizer's bos and eos.
EXPECTED = {
    "vicuna_v1": f"<s>{VICUNA_SYS} USER: {Q1} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>",
    "llava_llama_2": f"<s>[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n{Q1} [/INST] {A1} </s>"
                     f"<s>[INST] {Q2} [/INST] {A2} </s>",
    "mistral_instruct": f"<s>[INST] {Q1} [/INST] {A1} </s>[INST] {Q2} [/INST] {A2} </s>",
    "chatml": "<|im_start|>system\nAnswer the questions.<|im_end|>\n"
    f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"
    f"<|im_start|>user\n{Q2}<|im_end|>\n<|im_start|>assistant\n{A2}<|im_end|>\n",
}
# The prompt for the first answer (generation prompt after Q1).
EXPECTED_PROMPT = {
    "vicuna_v1": f"<s>{VICUNA_SYS} USER: {Q1} ASSISTANT:",
    "llava_llama_2": f"<s>[INST] <<SYS>>\n{LLAMA2_SYS}\n<</SYS>>\n\n{Q1} [/INST]",
    "mistral_instruct": f"<s>[INST] {Q1} [/INST]",
    "chatml": f"<|im_start|>system\nAnswer the questions.<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n"
              "<|im_start|>assistant\n",
}
# What follows each answer, end-of-turn token included (the supervised tokens decode to answer + this).
AFTER_ANSWER = {"vicuna_v1": "</s>", "llava_llama_2": " </s>", "mistral_instruct": " </s>", "chatml": "<|im_end|>"}
# With a system message "Be brief." instead of the default.
EXPECTED_SYSTEM = {
    "vicuna_v1": f"<s>Be brief. USER: {Q1} ASSISTANT: {A1}</s>",
    "llava_llama_2": f"<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n{Q1} [/INST] {A1} </s>",
    "mistral_instruct": f"<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n{Q1} [/INST] {A1} </s>",
    "chatml": f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{Q1}<|im_end|>\n"
              f"<|im_start|>assistant\n{A1}<|im_end|>\n",
}


def _prepare(tok, d):
    """Save and reload as the library does, without a chat template (like Vicuna's), with <image> special."""
    tok.chat_template = None
    tok.save_pretrained(d)
    tok = AutoTokenizer.from_pretrained(d)
    assert not tok.chat_template
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    return tok


@pytest.fixture(scope="module")
def bpe_tok(tmp_path_factory):
    return _prepare(make_tokenizer("chatml"), tmp_path_factory.mktemp("bpe_tok"))


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    """The real Llama-style SentencePiece tokenizer shipped inside the mistral-common wheel."""
    import mistral_common

    src = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    d = tmp_path_factory.mktemp("sp_tok")
    shutil.copy(src, d / "tokenizer.model")
    return _prepare(LlamaTokenizer.from_pretrained(d), d)


@pytest.fixture(params=["bpe", "sentencepiece"])
def tok(request, bpe_tok, sp_tok):
    return bpe_tok if request.param == "bpe" else sp_tok


def conv(*turns, system=None, images=("a.png",)):
    msgs = [Message("system", system)] if system is not None else []
    msgs += [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    return Conversation(msgs, list(images), id="t1", source="test.json:0")


def chat(c: Conversation) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in c.messages]


def run(tok, c, **kw):
    return render(c, tok, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_len=1,
                  max_length=4096, **kw)


@pytest.mark.parametrize("name", NAMES)
def test_llava_text_character_for_character(name, bpe_tok):
    set_chat_template(bpe_tok, name)
    c = conv(Q1, A1, Q2, A2)
    assert bpe_tok.apply_chat_template(chat(c), tokenize=False) == EXPECTED[name]
    prompt = bpe_tok.apply_chat_template(chat(c)[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == EXPECTED_PROMPT[name]


@pytest.mark.parametrize("name", NAMES)
def test_render_supervises_answers_and_end_of_turn(name, tok):
    set_chat_template(tok, name)
    eot = "<|im_end|>" if name == "chatml" else tok.eos_token
    c = conv(Q1, A1, Q2, A2)
    r = run(tok, c)
    # every token of the LLaVA text is there, the <image> token included, in order
    text = tok.apply_chat_template(chat(c), tokenize=False)
    assert r.input_ids == tok(text, add_special_tokens=False).input_ids
    assert r.num_images == 1
    runs = supervised_runs(r)
    assert len(runs) == 2
    for ids, answer in zip(runs, (A1, A2)):
        assert tok.decode(ids, skip_special_tokens=False).strip() == answer + AFTER_ANSWER[name].replace("</s>", eot)
        assert ids[-1] == tok.convert_tokens_to_ids(eot)
    # the generation prompt stops where the first answer starts
    prompt = render_prompt(c.messages[:1], tok, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                           image_seq_len=1)
    first = r.labels.index(runs[0][0])
    assert r.input_ids[:len(prompt)] == prompt
    assert all(lab == IGNORE_INDEX for lab in r.labels[:len(prompt)]) and first >= len(prompt)


@pytest.mark.parametrize("name", NAMES)
def test_system_message_overrides_default(name, bpe_tok, sp_tok):
    set_chat_template(bpe_tok, name)
    c = conv(Q1, A1, system="Be brief.")
    text = bpe_tok.apply_chat_template(chat(c), tokenize=False)
    assert text == EXPECTED_SYSTEM[name]
    assert SYSTEM_PROMPTS[name] == "" or SYSTEM_PROMPTS[name] not in text
    # render's system_prompt argument is the same thing as a system message
    for tok in (bpe_tok, sp_tok):
        set_chat_template(tok, name)
        with_msg, with_arg = run(tok, c), run(tok, conv(Q1, A1), system_prompt="Be brief.")
        assert with_msg.input_ids == with_arg.input_ids and with_msg.labels == with_arg.labels
        assert len(supervised_runs(with_msg)) == 1


def test_empty_system_prompt_emits_nothing(bpe_tok):
    set_chat_template(bpe_tok, "vicuna_v1")
    assert bpe_tok.apply_chat_template(chat(conv(Q1, A1, system="")),
                                       tokenize=False) == f"<s>USER: {Q1} ASSISTANT: {A1}</s>"
    set_chat_template(bpe_tok, "chatml")
    out = bpe_tok.apply_chat_template(chat(conv(Q1, A1, system="")), tokenize=False)
    assert out == f"<|im_start|>user\n{Q1}<|im_end|>\n<|im_start|>assistant\n{A1}<|im_end|>\n"


def test_chatml_adds_its_special_tokens_and_saves(sp_tok, tmp_path):
    tok = AutoTokenizer.from_pretrained(sp_tok.name_or_path)  # a fresh copy: this test grows the vocab
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    n = len(tok)
    assert "<|im_end|>" not in tok.get_vocab()
    set_chat_template(tok, "chatml")
    assert len(tok) == n + 2  # the caller resizes the LM's embeddings
    ids = tok("<|im_start|>user\nHi<|im_end|>", add_special_tokens=False).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>") and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    set_chat_template(tok, "chatml")
    assert len(tok) == n + 2  # idempotent
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    assert back.chat_template == TEMPLATES["chatml"] and len(back) == n + 2
    r = run(back, conv(Q1, A1, Q2, A2))
    assert [back.decode(x).strip() for x in supervised_runs(r)] == [A1 + "<|im_end|>", A2 + "<|im_end|>"]


def test_template_from_jinja_file(bpe_tok, tmp_path):
    path = tmp_path / "mine.jinja"
    path.write_text(TEMPLATES["vicuna_v1"].replace("USER:", "HUMAN:"))
    set_chat_template(bpe_tok, str(path))
    assert bpe_tok.apply_chat_template(chat(conv(Q1, A1)), tokenize=False).startswith(f"<s>{VICUNA_SYS} HUMAN: ")
    with pytest.raises(ValueError, match="not found"):
        set_chat_template(bpe_tok, str(tmp_path / "missing.jinja"))


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError) as e:
        set_chat_template(make_tokenizer("chatml"), "vicuna")
    msg = str(e.value)
    assert "\n" not in msg and ".jinja" in msg and all(n in msg for n in NAMES)


def test_stage_configs_name_vicuna_template():
    from llava_lite.config import load_config

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    for name in ("stage1.yaml", "stage2.yaml", "stage2_lora.yaml"):
        assert load_config(os.path.join(root, name), []).data.chat_template == "vicuna_v1"
    assert load_config(os.path.join(root, "stage2.yaml"), ["data.chat_template=chatml"]).data.chat_template == "chatml"
