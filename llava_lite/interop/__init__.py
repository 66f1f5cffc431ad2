"""The formats people serve models in: `llava-lite export` (export.py), the llava-hf mapping
(hf_llava.py, hf_clip.py) and imports from llava-hf and LLaVA checkpoints (hf_import.py)."""
