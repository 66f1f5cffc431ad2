"""The model a training run starts from: fresh from base checkpoints, or continued from a model
directory (`model.init_from`), with the run's chat template and LoRA applied."""
from __future__ import annotations

from llava_lite.config import Config
from llava_lite.data.templates import set_chat_template
from llava_lite.model.llava import LlavaLite
from llava_lite.model.lm import apply_lora, resize_embeddings


def build_model(cfg: Config, mode: str) -> LlavaLite:
    """Fresh from base checkpoints, or continue from a llava-lite directory (stage 2 <- stage 1)."""
    quantize = cfg.lora.quantize if cfg.lora.enabled else None
    # init_from may also be a llava-hf or llava_llama directory (imported once into
    # <output_dir>/imported/) or LLaVA's mm_projector.bin (loaded into a fresh build); see init_from.py
    from llava_lite.train.init_from import resolve_init_from

    model = resolve_init_from(cfg, quantize)
    if model is None and cfg.model.init_from:  # a llava-lite directory
        model = LlavaLite.from_pretrained(cfg.model.init_from, dtype=cfg.model.dtype,
                                          attn_implementation=cfg.model.attn_implementation, quantize=quantize)
        if hasattr(model.lm, "peft_config"):  # a LoRA run continues from merged weights
            model.lm = model.lm.merge_and_unload()
        model.cfg.vision.pad_to_square = cfg.model.vision.pad_to_square  # preprocessing: see init_check.py
    elif model is None:
        model = LlavaLite.build(cfg.model, quantize=quantize)
    if cfg.data.chat_template:  # saved with the tokenizer, so chat, serve and export use it too
        set_chat_template(model.tokenizer, cfg.data.chat_template)
        resize_embeddings(model.lm, len(model.tokenizer))  # chatml may have added its markers
    model.render_mode = mode
    model.system_prompt = cfg.data.system_prompt
    if cfg.lora.enabled and cfg.train.stage != "align":
        model.lm = apply_lora(model.lm, cfg.lora, cfg.train.gradient_checkpointing)
    return model
