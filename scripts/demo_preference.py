"""Preference tuning and self-improvement on the demo world, after `make demo`: the README's table.

    .venv/bin/python scripts/demo_preference.py [--demo runs/demo] [--out runs/demo-preference]

1. `llava-lite data pairs`: the stage-2 model samples 4 answers to 1500 training questions (the
   reference verifier keeps its wrong ones as rejected), plus hallucination pairs from the
   annotations (POVID swaps, POPE-style yes/no);
2. `llava-lite train configs/dpo.yaml` from the stage-2 model on those pairs, as plain DPO and with
   RPO's NLL term (`preference.rpo_alpha=1`);
3. a new pool of images the model never saw (the world's generator, another seed) with rule
   questions, whose answers the agreement verifier does not read;
4. `llava-lite improve configs/improve.yaml`: rounds of self-generated SFT data from the RPO model;
5. `llava-lite eval` of stage 2 and both preference models, and a table (OUT/table.md) of every model,
   with how often each round's kept answers were right by the pool's annotations (never read by the loop).

Every step is skipped when its output exists, so a killed run goes on where it stopped.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "llava_lite.cli"]
KEYS = ("vqa_accuracy", "pope_f1", "pope_accuracy", "pope_yes_ratio", "general_ppl")


def run(*args: str) -> None:
    print("+ llava-lite " + " ".join(args), flush=True)
    subprocess.run([*CLI, *args], check=True, cwd=ROOT)


def evaluate(model: Path, demo: Path, out: Path) -> dict:
    if not (out / "report.json").is_file():
        run("eval", "--model", str(model), "--vqa", str(demo / "data" / "vqa_test.jsonl"), "--pope",
            str(demo / "data" / "pope_test.jsonl"), "--general", str(demo / "data" / "general_test.txt"),
            "--image-folder", str(demo / "world" / "images"), "--max-new-tokens", "4", "--out", str(out))
    return json.loads((out / "report.json").read_text())


def pool(demo: Path, out: Path, n: int) -> Path:
    """Images from the world's generator with another seed, and one rule question about each."""
    path = out / "pool.json"
    if path.is_file():
        return path
    from data_tools.annotations import load_coco
    from data_tools.teachers.rule import grounded_qa
    from llava_lite.demo.world import make_world

    world = json.loads((demo / "world" / "world.json").read_text())
    make_world(out / "pool_world", n_train=n, n_test=0, image_size=world["image_size"], seed=world["seed"] + 1)
    rng = random.Random(1)
    records = []
    for s in load_coco(out / "pool_world" / "annotations" / "instances_train.json"):
        qa = rng.choice(grounded_qa(s.objects, rng))
        records.append({"id": f"pool-{s.id}", "image": s.file_name, "conversations": [
            {"from": "human", "value": "<image>\n" + qa["question"]}, {"from": "gpt", "value": qa["answer"]}]})
    path.write_text(json.dumps(records))
    return path


def kept_accuracy(round_dir: Path, world: Path) -> tuple[int, int, int]:
    """(right, wrong, no single truth) of a round's kept answers, checked against the pool world's
    annotations, which the loop never reads."""
    import re

    ann = json.loads((world / "annotations" / "instances_train.json").read_text())
    names, files = {c["id"]: c["name"] for c in ann["categories"]}, {im["id"]: im["file_name"] for im in ann["images"]}
    objs: dict[str, list] = {}
    for a in ann["annotations"]:
        objs.setdefault(files[a["image_id"]], []).append((a["color"], names[a["category_id"]]))
    counts = [0, 0, 0]
    for r in json.loads((round_dir / "data.json").read_text()):
        o, q = objs.get(r["image"], []), r["conversations"][0]["value"].split("\n")[1]
        answer = r["conversations"][1]["value"].strip().lower()
        truth = None
        if m := re.match(r"What color is the (\w+)\?", q):
            found = [c for c, s in o if s == m[1]]
            truth = found[0] if len(found) == 1 else None
        elif m := re.match(r"What shape is the (\w+) object\?", q):
            found = [s for c, s in o if c == m[1]]
            truth = found[0] if len(found) == 1 else None
        elif m := re.match(r"Is there an? (\w+) (\w+) in the image\?", q):
            truth = "yes" if (m[1], m[2]) in o else "no"
        elif m := re.match(r"How many (\w+) are there in the image\?", q):
            truth = str(sum(1 for _, s in o if m[1] in (s + "s", s + "es")))
        counts[2 if truth is None else 0 if truth == answer else 1] += 1
    return counts[0], counts[1], counts[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", type=Path, default=ROOT / "runs" / "demo")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "demo-preference")
    p.add_argument("--questions", type=int, default=1500, help="training questions the model samples answers to")
    p.add_argument("--pool", type=int, default=1600, help="new images for the improve rounds")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    demo, out = args.demo.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    images = demo / "world" / "images"
    pairs = out / "pairs.jsonl"
    if not pairs.is_file():
        run("data", "pairs", str(demo / "data" / "short_train.json"), str(pairs), "--model", str(demo / "stage2"),
            "--image-folder", str(images), "--verifier", "reference", "--samples", "4", "--max-new-tokens", "8",
            "--limit", str(args.questions), "--annotations", str(demo / "world" / "annotations" /
                                                                   "instances_train.json"))
    rows = [("stage 2", evaluate(demo / "stage2", demo, out / "eval" / "stage2"), {})]
    for name, label, extra in (("dpo", "+ DPO on the pairs", []),
                               ("dpo_rpo", "+ DPO + RPO (rpo_alpha 1) on the pairs", ["preference.rpo_alpha=1.0"])):
        if not (out / name / "llava_lite.json").is_file():
            run("train", str(ROOT / "configs" / "dpo.yaml"), f"model.init_from={demo / 'stage2'}",
                f"data.sources=[{{path: {pairs}, image_folder: {images}}}]", f"train.output_dir={out / name}",
                "data.max_length=512", "data.num_workers=2", "train.batch_size=16", "train.lr=5e-5",
                "train.projector_lr=5e-5", "train.gradient_checkpointing=false", "train.save_every=100", *extra)
        rows.append((label, evaluate(out / name, demo, out / "eval" / name), {}))
    dpo = out / "dpo_rpo"  # plain DPO pushes single-word answers' own log-probs down (README)
    prompts = pool(demo, out, args.pool)
    run("improve", str(ROOT / "configs" / "improve.yaml"), f"model={dpo}", f"prompts={prompts}",
        f"image_folder={out / 'pool_world' / 'images'}", f"out={out / 'improve'}",
        f"vqa={demo / 'data' / 'vqa_test.jsonl'}",
        f"pope={demo / 'data' / 'pope_test.jsonl'}", f"general={demo / 'data' / 'general_test.txt'}",
        f"eval_image_folder={images}", f"replay.0.path={demo / 'data' / 'short_train.json'}",
        f"replay.0.image_folder={images}", f"replay.1.path={demo / 'world' / 'text_tasks' / 'train.json'}",
        "--rounds", str(args.rounds))
    notes = []
    for line in (out / "improve" / "rounds.jsonl").read_text().splitlines()[1:]:
        r = json.loads(line)
        rows.append((f"+ improve round {r['round']}", r, r))
        if (out / "improve" / f"round-{r['round']}" / "data.json").is_file():
            right, wrong, unknown = kept_accuracy(out / "improve" / f"round-{r['round']}", out / "pool_world")
            notes.append(f"round {r['round']}: kept answers right {right / max(right + wrong, 1):.1%} against the "
                         f"annotations ({right} right, {wrong} wrong, {unknown} without a single true answer)")
    lines = ["| model | VQA | POPE F1 | POPE acc | yes-ratio | general ppl | kept / rejected | answer entropy |",
             "|---|---|---|---|---|---|---|---|"]
    pct = lambda v: "" if v is None else f"{v:.1%}"
    for name, m, r in rows:
        kept = f"{r['kept']} / {r['rejected']}" if r else ""
        ent = "" if r.get("answer_entropy") is None else f"{r['answer_entropy']:.2f} bits"
        ppl = "" if m.get("general_ppl") is None else f"{m['general_ppl']:.2f}"
        lines.append(f"| {name} | {pct(m.get('vqa_accuracy'))} | {pct(m.get('pope_f1'))} | "
                     f"{pct(m.get('pope_accuracy'))} | {pct(m.get('pope_yes_ratio'))} | {ppl} | {kept} | {ent} |")
    lines += [""] + notes
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
