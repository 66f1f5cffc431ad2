#!/usr/bin/env bash
# Stage 1 (align): the projector learns to map CLIP patches into the LM on image-caption pairs; tower and LM frozen (LLaVA-1.5: scripts/v1_5/pretrain.sh).
# Arguments go to `llava-lite train`: dotted overrides and flags, e.g.
#   scripts/pretrain.sh train.batch_size=8 train.grad_accum=4 --resume
# One GPU or CPU by default; several with an accelerate config, e.g.
#   ACCELERATE_CONFIG=configs/accelerate/zero2.yaml scripts/pretrain.sh
set -euo pipefail
exec accelerate launch ${ACCELERATE_CONFIG:+--config_file "$ACCELERATE_CONFIG"} \
  -m llava_lite.cli train "$(dirname "$0")/../configs/stage1.yaml" "$@"
