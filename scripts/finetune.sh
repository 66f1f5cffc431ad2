#!/usr/bin/env bash
# Stage 2 (instruct): projector + the full LM on multimodal and text-only conversations, from the stage-1 directory (LLaVA-1.5: scripts/v1_5/finetune.sh).
# Arguments go to `llava-lite train`: dotted overrides and flags, e.g.
#   scripts/finetune.sh train.batch_size=8 train.grad_accum=4 --resume
# One GPU or CPU by default; several with an accelerate config, e.g.
#   ACCELERATE_CONFIG=configs/accelerate/zero2.yaml scripts/finetune.sh
set -euo pipefail
exec accelerate launch ${ACCELERATE_CONFIG:+--config_file "$ACCELERATE_CONFIG"} \
  -m llava_lite.cli train "$(dirname "$0")/../configs/stage2.yaml" "$@"
