"""Builders for tiny random models and tokenizers used across the tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from llava_lite.model.random import random_lm

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Llama-3 style: bos once, role headers, content trimmed, <|eot_id|> ends every turn.
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# Mistral v1 style, for the real SentencePiece tokenizer: [INST] user [/INST] answer</s>
MISTRAL = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% elif m['role'] == 'assistant' %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)

CORPUS = [
    "A red circle and a small blue square on a grey background.",
    "What colour is the triangle? The triangle is green.",
    "How many objects are there? There are 3 objects.",
    "Reverse the word 'cat'. tac. Add 2 and 3. The answer is 5.",
    "The quick brown fox jumps over the lazy dog, 0123456789!?",
] * 20

SPECIALS = {
    "chatml": ["<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<pad>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"],
}


def make_tokenizer(template: str = "chatml", vocab_size: int = 400) -> PreTrainedTokenizerFast:
    specials = SPECIALS[template]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1], pad_token="<pad>",
        additional_special_tokens=specials[3:],
    )
    fast.chat_template = {"chatml": CHATML, "llama3": LLAMA3}[template]
    return fast


def make_tiny_lm(out: Path, template: str = "chatml", hidden: int = 64, layers: int = 2, seed: int = 0,
                 tie: bool = False) -> Path:
    tok = make_tokenizer(template)
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
    )
    random_lm(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_llava_llama(out, tower: str, weights: str = "safetensors", seed: int = 0):
    """A tiny directory the way LLaVA's trainer writes one: LlavaLlamaForCausalLM config.json with mm_* fields,
    the Llama weights beside model.mm_projector.*, and the base tokenizer (no <image>, no chat template)."""
    from safetensors.torch import save_file

    from llava_lite.config import VisionConfig
    from llava_lite.model.vision import VisionTower

    tok = make_tokenizer("chatml")
    tok.chat_template = None
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    lm = random_lm(cfg)
    width = VisionTower(VisionConfig(model=tower, pretrained=None)).width
    projector = {"model.mm_projector.0.weight": torch.randn(48, width) * 0.1,  # [hidden, vision width]
                 "model.mm_projector.0.bias": torch.randn(48),
                 "model.mm_projector.2.weight": torch.randn(48, 48) * 0.1, "model.mm_projector.2.bias": torch.randn(48)}
    out.mkdir()
    state = {k: v.contiguous() for k, v in lm.state_dict().items()} | projector
    if weights == "safetensors":
        save_file(state, str(out / "model.safetensors"))
    else:
        torch.save(state, out / "pytorch_model.bin")
    config = cfg.to_dict() | {
        "model_type": "llava_llama", "architectures": ["LlavaLlamaForCausalLM"],
        "mm_vision_tower": "openai/clip-vit-large-patch14-336", "mm_hidden_size": width,
        "mm_projector_type": "mlp2x_gelu", "mm_vision_select_layer": -2, "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad", "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
        "tune_mm_mlp_adapter": False, "tokenizer_model_max_length": 512, "tokenizer_padding_side": "right",
    }
    (out / "config.json").write_text(json.dumps(config))
    tok.save_pretrained(out)
    return lm, {k.removeprefix("model.mm_projector."): v for k, v in projector.items()}


COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}


def make_llava_data(root: Path, n: int = 16, seed: int = 0) -> dict[str, Path]:
    """Solid-colour images with caption (stage-1), conversation (stage-2) and Alpaca (text) files."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    captions, convs = [], []
    names = list(COLOURS)
    for i in range(n):
        colour = names[i % len(names)]
        size = (24 + rng.randrange(16), 24 + rng.randrange(16))
        Image.new("RGB", size, COLOURS[colour]).save(root / "images" / f"{i}.png")
        captions.append({"id": f"cap{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nDescribe the image briefly."},
            {"from": "gpt", "value": f"A {colour} square."}]})
        convs.append({"id": f"conv{i}", "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the image?"},
            {"from": "gpt", "value": f"The image is {colour}."},
            {"from": "human", "value": "Is it a square?"},
            {"from": "gpt", "value": "Yes."}]})
    convs += [{"id": f"text{i}", "conversations": [
        {"from": "human", "value": f"Add {i} and 2."}, {"from": "gpt", "value": f"{i + 2}"}]} for i in range(n // 2)]
    alpaca = [{"instruction": f"Add {i} and 3.", "input": "", "output": f"{i + 3}"} for i in range(n)]
    paths = {"captions": root / "captions.json", "conversations": root / "conversations.json",
             "alpaca": root / "alpaca.json"}
    for key, data in (("captions", captions), ("conversations", convs), ("alpaca", alpaca)):
        paths[key].write_text(json.dumps(data))
    return paths


def make_pair_data(root: Path, n: int = 16, text: int = 4, seed: int = 0) -> dict[str, Path]:
    """make_llava_data's files plus preference pairs over its images: `pairs` (LLaVA-NeXT DPO
    records, the right colour against the next one, and `text` TRL-style text-only pairs)."""
    paths = make_llava_data(root, n, seed)
    names = list(COLOURS)
    pairs = [{"id": f"pair{i}", "image": f"{i}.png", "prompt": "<image>\nWhat colour is the image?",
              "chosen": f"The image is {names[i % 4]}.", "rejected": f"The image is {names[(i + 1) % 4]}."}
             for i in range(n)]
    pairs += [{"id": f"tpair{i}", "prompt": [{"role": "user", "content": f"Add {i} and 2."}],
               "chosen": [{"role": "assistant", "content": f"{i + 2}"}],
               "rejected": [{"role": "assistant", "content": f"{i + 3}"}]} for i in range(text)]
    paths["pairs"] = root / "pairs.jsonl"
    paths["pairs"].write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return paths
