"""A llava-hf directory made by transformers itself (random LlavaForConditionalGeneration + LlavaProcessor), for
the import tests and for chat / eval / serve taking such a directory as --model."""
from __future__ import annotations

import torch

from helpers.tiny import CHATML, make_tokenizer


def image_tokenizer(template: str = CHATML):
    tok = make_tokenizer("chatml")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]}, replace_extra_special_tokens=False)
    tok.chat_template = template
    return tok


PINPOINTS = [[32, 64], [64, 32], [64, 64], [32, 96], [96, 32]]  # LLaVA-NeXT's shape of list, at the tiny size


def make_hf_llava(out, act: str, layer: int, strategy: str, pad: bool, projector_act: str = "gelu", seed: int = 0,
                  template: str = CHATML, next_: bool = False):
    """A random LlavaForConditionalGeneration (next_: LlavaNextForConditionalGeneration, AnyRes) made by
    transformers itself, saved with its processor."""
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessor,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    tok = image_tokenizer(template)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                              image_size=32, patch_size=8, hidden_act=act)
    config, extra = (LlavaNextConfig, {"image_grid_pinpoints": PINPOINTS}) if next_ else (LlavaConfig, {})
    cfg = config(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                 vision_feature_layer=layer, vision_feature_select_strategy=strategy,
                 projector_hidden_act=projector_act, image_seq_length=16 + (strategy == "full"), **extra)
    torch.manual_seed(seed)
    model = (LlavaNextForConditionalGeneration if next_ else LlavaForConditionalGeneration)(cfg).eval()
    with torch.no_grad():  # larger than the default init, so that every part visibly moves the logits
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    kw = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, resample=3,
              image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    if next_:
        images, processor = LlavaNextImageProcessor(image_grid_pinpoints=PINPOINTS, **kw), LlavaNextProcessor
    else:
        images, processor = LlavaImageProcessor(do_pad=True, **kw) if pad else CLIPImageProcessor(**kw), LlavaProcessor
    processor(image_processor=images, tokenizer=tok, patch_size=8, vision_feature_select_strategy=strategy,
              num_additional_image_tokens=1, chat_template=template).save_pretrained(out)
    return model
