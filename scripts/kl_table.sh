#!/usr/bin/env bash
# What a text-only SFT of the demo's base LM keeps of it, with and without the KL-to-base penalty:
# two runs of configs/text_sft.yaml (train.kl_to_base=0 and =BETA), each evaluated against the base
# with `llava-lite eval --base`, printed as one table. Needs a finished `make demo` (runs/demo).
#   scripts/kl_table.sh [DEMO_DIR=runs/demo] [BETA=1.0] [STEPS=80]
set -euo pipefail
D=${1:-runs/demo}; BETA=${2:-1.0}; STEPS=${3:-80}
OUT=$D/kl_table
for beta in 0 "$BETA"; do
  llava-lite train "$(dirname "$0")/../configs/text_sft.yaml" model.lm="$D/lm" model.vision.model=tiny \
    model.vision.pretrained=null model.dtype=bfloat16 data.max_length=512 \
    "data.sources=[{path: $D/world/text_tasks/train.json, format: alpaca}]" \
    train.output_dir="$OUT/beta_$beta" train.max_steps="$STEPS" train.batch_size=16 train.grad_accum=1 \
    train.lr=1e-3 train.warmup_ratio=0 train.save_every=0 train.kl_to_base="$beta" > "$OUT.beta_$beta.log" 2>&1
  llava-lite eval --model "$OUT/beta_$beta" --base "$D/lm" --general "$D/data/general_test.txt" \
    --text-tasks "$D/world/text_tasks/test.json" --choice "$D/data/choice_test.jsonl" \
    --image-folder "$D/world/images" --out "$OUT/eval_$beta" > /dev/null
done
python - "$OUT" "$BETA" <<'PY'
import json, sys
out, beta = sys.argv[1], sys.argv[2]
runs = {b: json.load(open(f"{out}/eval_{b}/report.json")) for b in ("0", beta)}
base = runs["0"]["base"]
rows = [("general-text perplexity", "general_ppl", "{:.2f}"), ("text-task perplexity", "text_task_ppl", "{:.2f}"),
        ("multiple choice, text rows", "choice_text_accuracy", "{:.1%}")]
print(f"| {'':28} | base | kl_to_base=0 | kl_to_base={beta} |\n|---|---|---|---|")
for name, key, fmt in rows:
    cells = [fmt.format(base[key])] + [fmt.format(runs[b][key]) for b in ("0", beta)]
    print(f"| {name} | " + " | ".join(cells) + " |")
PY
