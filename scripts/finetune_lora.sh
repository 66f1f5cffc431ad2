#!/usr/bin/env bash
# Stage 2 with LoRA on the LM (lora.quantize=4bit for QLoRA on a GPU) (LLaVA-1.5: scripts/v1_5/finetune_lora.sh).
# Arguments go to `llava-lite train`: dotted overrides and flags, e.g.
#   scripts/finetune_lora.sh train.batch_size=8 train.grad_accum=4 --resume
# One GPU or CPU by default; several with an accelerate config, e.g.
#   ACCELERATE_CONFIG=configs/accelerate/zero2.yaml scripts/finetune_lora.sh
set -euo pipefail
exec accelerate launch ${ACCELERATE_CONFIG:+--config_file "$ACCELERATE_CONFIG"} \
  -m llava_lite.cli train "$(dirname "$0")/../configs/stage2_lora.yaml" "$@"
