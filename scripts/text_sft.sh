#!/usr/bin/env bash
# Text-only instruction tuning: the same path with no image.
# Arguments go to `llava-lite train`: dotted overrides and flags, e.g.
#   scripts/text_sft.sh train.batch_size=8 train.grad_accum=4 --resume
# One GPU or CPU by default; several with an accelerate config, e.g.
#   ACCELERATE_CONFIG=configs/accelerate/zero2.yaml scripts/text_sft.sh
set -euo pipefail
exec accelerate launch ${ACCELERATE_CONFIG:+--config_file "$ACCELERATE_CONFIG"} \
  -m llava_lite.cli train "$(dirname "$0")/../configs/text_sft.yaml" "$@"
