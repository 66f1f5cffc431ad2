"""The formats people serve models in: `llava-lite export` (export.py), the llava-hf mapping
(hf_llava.py; towers: hf_clip.py, hf_siglip.py), llama.cpp's GGUF pair (gguf_lm.py, gguf_mmproj.py),
imports from llava-hf and LLaVA checkpoints (hf_import.py), and where a model comes from (sources.py:
model.init_from told once, then loaded; `--model` directories through model_dir)."""
