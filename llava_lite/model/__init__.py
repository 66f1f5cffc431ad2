"""The model: a frozen vision tower, a trainable projector and a causal LM, fused in one module.

    llava.py            LlavaLite: image features fill the `<image>` slots; loss on supervised positions only
    fusion.py           tower -> projector -> each image's tokens in slot order (the model and the reference)
    vision.py           the frozen open_clip tower (features from a chosen block)
    anyres.py           AnyRes (LLaVA-NeXT): tiles, token counts, features packed back into the image's grid
    projector.py        linear / mlpNx_gelu, and AnyRes's (with the learned image_newline)
    lm.py               tokenizer, causal LM (directory, hub id or .gguf), LoRA, dtypes, attention choice
    gguf.py             a GGUF language model -> a transformers directory (converted once, cached)
    packed_attention.py per-sample SDPA for packed rows
    random.py           random models from shapes alone (tests, bench, GPU check, dry run, the demo's LM)
"""
