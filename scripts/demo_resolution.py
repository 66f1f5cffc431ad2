"""A task that needs resolution, on the demo world, and what AnyRes does for it (the README's resolution table).

    python scripts/demo_resolution.py runs/demo runs/resolution [--steps 200]

The demo's 64 px scenes, each pasted into one quadrant of a 128 x 128 canvas (the quadrant drawn per image):
the tower's input is 64 px, so at base resolution a scene is read at half its size, its 16-24 px objects at
8-12 px, one or two 8 px patches. AnyRes (max_tiles 4) cuts the 128 px image into four 64 px tiles, one of
them the scene at its own size, plus the whole image at 64 px.

Both rows start from the finished demo's stage-2 model and train the same steps on the demo's short-answer
records over the new images, then answer the demo's held-out VQA questions about them:
- base resolution: the stage-2 recipe as it is;
- AnyRes: the same, with model.vision.anyres.max_tiles=4 (a new image_newline; the tower and projector as
  they were).
Printed: VQA overall and per question type, image tokens per image, training seconds and samples/s.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from PIL import Image

from llava_lite.config import load_config
from llava_lite.eval.evaluate import evaluate
from llava_lite.log import setup
from llava_lite.train.recipe import Trainer

CONFIG = Path(__file__).parents[1] / "llava_lite" / "demo" / "configs" / "full_stage2.yaml"
SIDE = 128  # canvas px: twice the demo tower's input


def paste_scenes(names: set[str], src: Path, dst: Path, seed: int) -> None:
    """Each scene in a quadrant of a SIDE x SIDE canvas filled with its own corner colour (seeded per name)."""
    for name in sorted(names):
        if (dst / name).is_file():
            continue
        scene = Image.open(src / name).convert("RGB")
        canvas = Image.new("RGB", (SIDE, SIDE), scene.getpixel((0, 0)))
        quadrant = random.Random(f"{seed}:{name}").randrange(4)
        canvas.paste(scene, (quadrant % 2 * (SIDE - scene.width), quadrant // 2 * (SIDE - scene.height)))
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        canvas.save(dst / name)


def train(demo: Path, out: Path, images: Path, steps: int, extra: list[str]) -> tuple[Path, float, int]:
    """Stage 2 from the demo's stage-2 model on its short-answer records: (model dir, seconds, samples)."""
    overrides = [f"model.init_from={demo / 'stage2'}",
                 f"data.sources=[{{path: {demo / 'data' / 'short_train.json'}, image_folder: {images}, "
                 "isolate_turns: true}]",
                 f"train.output_dir={out}", f"train.max_steps={steps}", "train.warmup_ratio=0.05",
                 f"train.save_every={steps}", *extra]
    cfg = load_config(CONFIG, overrides)
    start = time.time()
    model_dir = Trainer(cfg).run()
    return model_dir, time.time() - start, steps * cfg.train.batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("demo", type=Path, help="a finished `llava-lite demo --preset full` directory")
    p.add_argument("out", type=Path)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    setup()
    demo, out = args.demo.resolve(), args.out.resolve()
    vqa = demo / "data" / "vqa_test.jsonl"
    rows = [json.loads(line) for line in vqa.read_text().splitlines()]
    train_records = json.loads((demo / "data" / "short_train.json").read_text())
    images = out / "images"
    paste_scenes({r["image"] for r in rows} | {r["image"] for r in train_records}, demo / "world" / "images",
                 images, args.seed)
    results = {}
    for name, extra in (("base resolution", []), ("AnyRes, 4 tiles", ["model.vision.anyres.max_tiles=4"])):
        key = name.split(",")[0].replace(" ", "_").lower()
        model_dir, seconds, samples = train(demo, out / key, images, args.steps, extra)
        report = evaluate(str(model_dir), vqa=str(vqa), image_folder=str(images), max_new_tokens=4,
                          out_dir=str(out / "eval" / key))
        from llava_lite.model.llava import LlavaLite

        model = LlavaLite.from_pretrained(model_dir)
        results[name] = {"vqa": report["vqa_accuracy"], "by_type": report["vqa_accuracy_by_type"],
                         "tokens_per_image": model.image_tokens((SIDE, SIDE)), "train_seconds": round(seconds, 1),
                         "samples_per_s": round(samples / seconds, 2)}
        (out / "resolution.json").write_text(json.dumps(results, indent=2))
    types = sorted(next(iter(results.values()))["by_type"])
    print(f"\n| model | VQA | {' | '.join(types)} | image tokens | train samples/s |")
    print("|---" * (len(types) + 4) + "|")
    for name, r in results.items():
        cells = " | ".join(f"{r['by_type'][t]:.1%}" for t in types)
        print(f"| {name} | {r['vqa']:.1%} | {cells} | {r['tokens_per_image']} | {r['samples_per_s']} |")


if __name__ == "__main__":
    main()
