"""`llava-lite demo`: the embedded default (a synthetic world, base models pre-trained here, both stages,
evaluation), run by presets.py's numbers and configs/."""
