"""configs/stage1.yaml and stage2.yaml as shipped, for lmsys/vicuna-7b-v1.5, whose tokenizer has no chat
template (issue 12): with a local Llama SentencePiece tokenizer that has none either, a sample renders
as LLaVA-1.5 trains on it: stage 1 `<s><image>caption</s>`, stage 2 LLaVA's vicuna_v1 conversation,
loss on exactly the answers and their </s>. Only model.lm is overridden; the data path is the trainer's
(read_conversations -> dataset_for -> render), the tokenizer is made as build.build_model makes it."""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, LlamaTokenizer

from llava_lite.config import load_config
from llava_lite.constants import IGNORE_INDEX
from llava_lite.data.loader import dataset_for
from llava_lite.data.readers import read_conversations
from llava_lite.data.templates import SYSTEM_PROMPTS, set_chat_template
from llava_lite.model.lm import load_tokenizer

CONFIGS = Path(__file__).parents[2] / "configs"
P = 576  # image tokens of ViT-L-14-336 (24 x 24 patches), the configs' tower
QUESTIONS = ["What is in the image?", "Is it big?"]
ANSWERS = ["A red square on a white background.", "No, it is small."]


@pytest.fixture(scope="module")
def vicuna_like(tmp_path_factory) -> Path:
    """Llama's 32k SentencePiece vocabulary with <s> / </s> (the copy inside the mistral-common wheel), saved
    without a chat template, as lmsys/vicuna-7b-v1.5 ships its tokenizer."""
    import mistral_common

    d = tmp_path_factory.mktemp("vicuna_like")
    shutil.copy(Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1", d / "tokenizer.model")
    LlamaTokenizer.from_pretrained(d).save_pretrained(d)
    assert not AutoTokenizer.from_pretrained(d).chat_template
    return d


def sample(tmp_path, config: str, lm: Path, record: dict):
    """One record through the config's own data settings and tokenizer, as the trainer renders it."""
    cfg = load_config(CONFIGS / config, [f"model.lm={lm}"])
    assert cfg.data.chat_template == "vicuna_v1"
    tok = load_tokenizer(cfg.model.lm)  # what LlavaLite.build loads, then build_model's template
    set_chat_template(tok, cfg.data.chat_template)
    Image.new("RGB", (40, 30), (200, 20, 20)).save(tmp_path / "0.png")
    (tmp_path / "data.json").write_text(json.dumps([record]))
    convs = read_conversations(tmp_path / "data.json", "auto", tmp_path)
    model = types.SimpleNamespace(  # the two things dataset_for takes from a model, besides its tokenizer
        tokenizer=tok, image_token_id=tok.convert_tokens_to_ids("<image>"), image_seq_len=P,
        vision=types.SimpleNamespace(image_to_pixels=lambda image: torch.zeros(1, 3, 336, 336), anyres=None))
    s = dataset_for(model, convs, cfg.data.max_length, cfg.data.mode, cfg.data.system_prompt)[0]
    assert not s.skipped and s.pixel_values.shape == (1, 3, 336, 336)
    ids, labels = s.input_ids.tolist(), s.labels.tolist()
    image = model.image_token_id
    assert ids.count(image) == P and all(lab == IGNORE_INDEX for i, lab in zip(ids, labels) if i == image)
    first = ids.index(image)
    collapsed = ids[:first] + ids[first + P - 1:]  # one <image> per image, as LLaVA's prompt string has it
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            runs, cur = runs + [cur], []
    return tok, collapsed, runs + ([cur] if cur else [])


def test_stage1_config_renders_plain_captions(tmp_path, vicuna_like):
    record = {"id": "cap0", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\nDescribe the image briefly."}, {"from": "gpt", "value": ANSWERS[0]}]}
    tok, ids, runs = sample(tmp_path, "stage1.yaml", vicuna_like, record)
    assert ids == tok("<s><image>" + ANSWERS[0] + "</s>", add_special_tokens=False).input_ids
    assert [tok.decode(r).strip() for r in runs] == [ANSWERS[0] + "</s>"]


def test_stage2_config_renders_llava_vicuna_v1(tmp_path, vicuna_like):
    record = {"id": "conv0", "image": "0.png", "conversations": [
        {"from": "human", "value": "<image>\n" + QUESTIONS[0]}, {"from": "gpt", "value": ANSWERS[0]},
        {"from": "human", "value": QUESTIONS[1]}, {"from": "gpt", "value": ANSWERS[1]}]}
    tok, ids, runs = sample(tmp_path, "stage2.yaml", vicuna_like, record)
    # LLaVA's conv_vicuna_v1.get_prompt() (sep " ", sep2 "</s>") behind the bos its tokenizer call adds
    llava = (f"<s>{SYSTEM_PROMPTS['vicuna_v1']} USER: <image>\n{QUESTIONS[0]} ASSISTANT: {ANSWERS[0]}</s>"
             f"USER: {QUESTIONS[1]} ASSISTANT: {ANSWERS[1]}</s>")
    assert SYSTEM_PROMPTS["vicuna_v1"].startswith("A chat between a curious user and an artificial intelligence")
    assert ids == tok(llava, add_special_tokens=False).input_ids
    assert [tok.decode(r).strip() for r in runs] == [a + "</s>" for a in ANSWERS]
    assert sum(map(len, runs)) == sum(len(tok(a, add_special_tokens=False).input_ids) + 1 for a in ANSWERS)
