#!/usr/bin/env bash
# The prepared GPU check (about 5 minutes on one H100/H200): random weights, a 7B-shaped Llama with a
# ViT-L/14-336-shaped open_clip tower (stage 1) and a 1B-shaped Llama (stage 2, full), bf16, SDPA and
# flash-attn when installed. Prints samples/s, tokens/s, peak GPU memory and MFU (see llava_lite/bench/gpu_check.py
# for the FLOP count). Put the table in the README with the date and the GPU name.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
date -u +"%Y-%m-%d %H:%M UTC"
HF_HUB_OFFLINE=1 "$PY" -m llava_lite.bench.gpu_check --device cuda --dtype bfloat16 --shapes 7b:align,1b:instruct \
  --batch-size "${BATCH:-8}" --seq "${SEQ:-1024}" --steps "${STEPS:-10}" "$@"
