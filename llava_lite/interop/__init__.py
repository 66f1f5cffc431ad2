"""The formats people serve models in: `llava-lite export` (export.py), the llava-hf mapping
(hf_llava.py, hf_clip.py), imports from llava-hf and LLaVA checkpoints (hf_import.py), and where a
run's model comes from (sources.py: model.init_from told once, then loaded)."""
