"""`llava-lite bench`: training throughput and memory of llava-lite against transformers' Llava
trained the way TRL trains it, in one run, on the same data and the same initial weights.

    llava-lite bench                      # the CPU shape: LM 256 x 6 layers, vocab 8192, ViT 256 x 6 @ 64 px
    llava-lite bench --ablate             # + each lever's share, one lever switched per row
    llava-lite bench --anyres 4           # + images at 2x the tower's size: base resolution against AnyRes
    llava-lite bench --device cuda --shape 1b --dtype bfloat16

Each side runs in a process of its own (bench/worker.py); the sides alternate for --rounds rounds
and every figure is the median over rounds. Warm-up steps are excluded. Reported per side:
samples/s, real (non-pad) tokens/s, the padding fraction, the peak memory above the process's
resting size after its first step (CPU: peak RSS; CUDA: max_memory_allocated), and the model's
useful FLOP/s as a share of a dense GEMM measured in the same run (the matmul limit); samples per
CPU-second (process CPU time) is printed too, as it is steadier than wall time on a shared
machine. The run ends with the ratios to the baseline.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llava_lite.constants import IGNORE_INDEX
from llava_lite.log import logger, setup

BASELINE = "hf-llava (TRL-style)"
MAIN = [(BASELINE, {"side": "hf"}), ("llava-lite", {"side": "lite"}),
        ("llava-lite + packing", {"side": "lite", "packing": True})]
# One lever switched against the plain llava-lite row.
LEVERS = [("- sparse head (full logits)", {"head": "full"}), ("- modality grouping", {"group": False}),
          ("+ bf16 autocast", {"dtype": "bfloat16"}), ("+ gradient checkpointing", {"grad_ckpt": True}),
          ("+ torch.compile", {"compile": True})]
# Long answers and a large vocabulary: where the head's logits dominate memory.
CE_DATA = {"overrides": {"vocab": 32000}, "answer_len": [256, 511], "batch": 4}
CE_LEVERS = [("long answers, vocab 32k: sparse head", {}), ("long answers, vocab 32k: chunked CE", {"head": "chunked"}),
             ("long answers, vocab 32k: full logits", {"head": "full"})]
METRICS = ("samples_per_s", "samples_per_cpu_s", "tokens_per_s", "padding", "peak_mb", "warmup_s", "step_s")


def _range(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return [int(lo), int(hi or lo)]


def run_worker(spec: dict) -> dict:
    """One side in a fresh process; its last output line is the result."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "llava_lite.bench.worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"bench worker {spec.get('side')} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH_RESULT "):])


def model_flops(spec: dict) -> tuple[float, float]:
    """(useful FLOPs per sample, per real token) of a training step on the bench's data."""
    from llava_lite.bench.setup import SHAPES, DataMix, bench_images, make_samples, step_flops

    shape = dict(SHAPES[spec["shape"]], **spec.get("overrides", {}))
    tokens, crops, size = bench_images(spec, shape)
    mix = DataMix(n=256, text_fraction=spec["text_fraction"], prompt_len=tuple(spec["prompt_len"]),
                  answer_len=tuple(spec["answer_len"]), images_per_sample=spec["images_per_sample"])
    samples = make_samples(mix, tokens, 1, shape["vocab"], crops, size)  # 1-px crops: only lengths matter here
    lengths = [len(s.input_ids) for s in samples]
    sup = sum(int((s.labels[1:] != IGNORE_INDEX).sum()) for s in samples)
    images = sum(0 if s.pixel_values is None else s.pixel_values.shape[0] for s in samples)
    total = step_flops(shape, lengths, sup, images, spec["stage"])
    return total / len(samples), total / sum(lengths)


def bench(args: argparse.Namespace) -> dict:
    """Run every side for --rounds rounds (progress on the package logger) and print the report."""
    from llava_lite.bench.setup import SHAPES, gemm_flops, write_vit_config

    shape = dict(SHAPES[args.shape], **({"vocab": args.vocab} if args.vocab else {}))
    tmp = Path(tempfile.mkdtemp(prefix="llava-lite-bench-"))
    base = {"shape": args.shape, "device": args.device, "dtype": args.dtype, "stage": args.stage, "lr": 1e-4,
            "warmup": args.warmup, "steps": args.steps, "text_fraction": args.text_fraction,
            "prompt_len": _range(args.prompt_len), "answer_len": _range(args.answer_len),
            "images_per_sample": args.images_per_sample, "max_length": args.max_length,
            "batch": args.batch or shape["batch"], "vit_ref": write_vit_config(shape, tmp / "vit"),
            "overrides": {"vocab": args.vocab} if args.vocab else {}}
    sides = [(name, base | v) for name, v in MAIN]
    if args.anyres:  # image samples twice the tower's size, tiled; the llava-lite row reads them as one crop
        from llava_lite.bench.setup import bench_images

        v = {"side": "lite", "anyres": args.anyres, "image_scale": 2}
        tokens, crops, _ = bench_images(v, shape)
        sides.append((f"+ AnyRes ({tokens} tokens, {crops} crops/image)", base | v))  # a lever against llava-lite
    if args.ablate:
        sides += [(name, base | {"side": "lite"} | v) for name, v in LEVERS]
        sides += [(name, base | {"side": "lite"} | CE_DATA | v) for name, v in CE_LEVERS]
    gemm_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[args.dtype]
    logger.info(f"llava-lite bench: shape {args.shape} (LM {shape['hidden']} x {shape['layers']} layers, "
                f"vocab {shape['vocab']}; ViT {shape['vit_width']} x {shape['vit_layers']} @ {shape['image']} px / "
                f"patch {shape['patch']}), batch {base['batch']}, {args.device} {args.dtype}, stage {args.stage}")
    logger.info(f"data: {args.text_fraction:.0%} text-only, prompts {args.prompt_len}, answers {args.answer_len} "
                f"tokens, {args.images_per_sample} image(s) per image sample; {args.warmup} warm-up + {args.steps} "
                f"timed steps per side, {args.rounds} round(s) alternating, medians; each side in its own process")
    runs: dict[str, list[dict]] = {name: [] for name, _ in sides}
    gemms = []
    started = time.perf_counter()
    for r in range(args.rounds):
        import torch

        gemms.append(gemm_flops(dtype=getattr(torch, gemm_dtype), device=args.device))
        for name, spec in (sides if r % 2 == 0 else sides[::-1]):
            res = run_worker(spec)
            runs[name].append(res)
            logger.info(f"  round {r + 1}: {name:<42} {res['samples_per_s']:8.2f} samples/s  "
                        f"{res['tokens_per_s']:9.0f} tokens/s  peak {res['peak_mb']:8.1f} MB")
    gemm = statistics.median(gemms)
    rows = {}
    for name, spec in sides:
        med = {k: statistics.median(x[k] for x in runs[name]) for k in METRICS}
        per_sample, per_token = model_flops(spec)
        med["model_tflops_per_s"] = med["samples_per_s"] * per_sample / 1e12
        med["of_gemm"] = med["model_tflops_per_s"] * 1e12 / gemm
        med["tokens_per_s_limit"] = gemm / per_token
        rows[name] = med
    return report(rows, gemm, args, time.perf_counter() - started)


def report(rows: dict, gemm: float, args, seconds: float) -> dict:
    """The table and ratios the user asked for: printed (stdout), not logged."""
    show = functools.partial(print, flush=True)
    show(f"\nmatmul limit: dense 2048^3 {args.dtype} GEMM {gemm / 1e9:.1f} GFLOP/s (median of rounds)\n")
    head = (f"| {'side':<42} | samples/s | samples/CPU-s | real tokens/s | padding | peak MB above rest | warm-up s | "
            f"model GFLOP/s | of GEMM limit |")
    show(head)
    show("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for name, m in rows.items():
        show(f"| {name:<42} | {m['samples_per_s']:9.2f} | {m['samples_per_cpu_s']:13.2f} | {m['tokens_per_s']:13.0f} | "
            f"{m['padding']:7.1%} | {m['peak_mb']:18.1f} | {m['warmup_s']:9.2f} | "
            f"{m['model_tflops_per_s'] * 1e3:13.2f} | {m['of_gemm']:13.1%} |")
    base = rows[BASELINE]
    ratios = {}
    show("")
    for name, m in rows.items():
        if name == BASELINE or name not in dict(MAIN):
            continue
        ratios[name] = {"samples_per_s": m["samples_per_s"] / base["samples_per_s"],
                        "samples_per_cpu_s": m["samples_per_cpu_s"] / base["samples_per_cpu_s"],
                        "tokens_per_s": m["tokens_per_s"] / base["tokens_per_s"],
                        "peak_memory": m["peak_mb"] / base["peak_mb"] if base["peak_mb"] > 0 else float("nan")}
        r = ratios[name]
        show(f"{name} / {BASELINE}: samples/s {r['samples_per_s']:.2f}x (per CPU-s {r['samples_per_cpu_s']:.2f}x), "
            f"real tokens/s {r['tokens_per_s']:.2f}x, peak memory {r['peak_memory']:.2f}x; "
            f"real tokens/s at {m['tokens_per_s'] / m['tokens_per_s_limit']:.0%} "
            f"of the GEMM limit ({m['tokens_per_s_limit']:.0f} tokens/s)")
    levers = {}
    plain = rows.get("llava-lite")
    for name, m in rows.items():
        if name.startswith(("-", "+", "long answers")) and not name.endswith("sparse head"):
            ref = rows["long answers, vocab 32k: sparse head"] if name.startswith("long") else plain
            levers[name] = {"samples_per_s": m["samples_per_s"] / ref["samples_per_s"],
                            "samples_per_cpu_s": m["samples_per_cpu_s"] / ref["samples_per_cpu_s"],
                            "peak_memory": m["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] > 0 else float("nan")}
    if levers:
        show("\neach lever against plain llava-lite (long-answer rows against their sparse-head row):")
        for name, v in levers.items():
            show(f"  {name:<42} samples/s {v['samples_per_s']:.2f}x (per CPU-s {v['samples_per_cpu_s']:.2f}x), "
                f"peak memory {v['peak_memory']:.2f}x")
    show(f"\nbench took {seconds:.0f} s")
    return {"rows": rows, "ratios": ratios, "levers": levers, "gemm_flops": gemm, "seconds": seconds,
            "args": {k: v for k, v in vars(args).items() if k != "func"}}


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--shape", choices=("micro", "tiny", "1b", "7b"), default="tiny",
                   help="model shape (default %(default)s: the CPU shape; micro is for tests)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="same on both sides")
    p.add_argument("--stage", choices=("instruct", "align"), default="instruct",
                   help="instruct: projector + LM train; align: projector only (stage 1)")
    p.add_argument("--text-fraction", type=float, default=0.3)
    p.add_argument("--prompt-len", default="24-47", help="prompt tokens, a range LO-HI")
    p.add_argument("--answer-len", default="16-31", help="answer tokens, a range LO-HI")
    p.add_argument("--images-per-sample", type=int, default=1)
    p.add_argument("--batch", type=int, default=None, help="default: the shape's")
    p.add_argument("--vocab", type=int, default=None, help="LM vocabulary (default: the shape's)")
    p.add_argument("--max-length", type=int, default=2048, help="packed row length (data.max_length)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per side and round")
    p.add_argument("--warmup", type=int, default=2, help="steps per side and round before timing")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ablate", action="store_true", help="also measure each lever's share")
    p.add_argument("--anyres", type=int, default=0, metavar="TILES",
                   help="also train on images twice the tower's size at base resolution and with AnyRes "
                        "(up to TILES tiles): tokens per image and samples/s, with and without")
    p.add_argument("--json", help="write the results to this file")
    return p


def run(args: argparse.Namespace) -> dict:
    result = bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on the package CLI."""
    p = subparsers.add_parser("bench", help="training speed and memory against transformers' Llava (TRL-style)",
                              description=__doc__.split("\n\n")[0])
    configure(p).set_defaults(func=run)
    return p


def main(argv: list[str] | None = None) -> dict:
    setup()
    return run(configure(argparse.ArgumentParser(prog="llava-lite bench", description=__doc__)).parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
