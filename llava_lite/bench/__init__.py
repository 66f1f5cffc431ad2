"""`llava-lite bench` (run.py) against transformers' Llava trained TRL-style: the models (setup.py),
one measured run per process (worker.py), and the GPU check (gpu_check.py)."""
