"""The prepared GPU check (scripts/gpu_check.sh): training throughput, peak memory and MFU of the
real model code at real shapes, random weights, one GPU, about 5 minutes.

    python -m llava_lite.bench.gpu_check                       # on a CUDA GPU: the rows below
    python -m llava_lite.bench.gpu_check --shapes tiny --device cpu --dtype float32   # the CPU smoke test

Rows: stage 1 (projector trains; frozen 7B-shaped Llama + ViT-L/14-336-shaped open_clip tower) and
stage 2 (projector + full LM; 1B-shaped Llama, since a full 7B with fp32 masters and AdamW needs
~110 GB before activations), each with SDPA and, when flash-attn is installed, flash_attention_2.
Each step is the trainer's: LlavaLite forward under autocast, token-weighted loss, backward,
clipping, AdamW; text-only batches are not used (every sample has one image).

MFU = model FLOP/s / peak. Model FLOPs per sample, stated here: 6 x (LM + projector parameters) x
tokens (forward + backward; in stage 1 the frozen LM computes no weight gradients, so this counts
its backward as full and overstates stage-1 MFU by up to 1/3) + 2 x ViT parameters x patches (the
frozen tower runs forward only). Peak = the GPU's dense bf16 FLOP/s (H100/H200 SXM: 989e12;
override with --peak-tflops).
"""
from __future__ import annotations

import argparse
import time

import torch

from llava_lite.constants import IGNORE_INDEX

SHAPES = {  # Llama shapes; "tiny" is the CPU test
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
               vocab_size=32000),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=512),
}
VITS = {"7b": "ViT-L-14-336-quickgelu", "1b": "ViT-L-14-336-quickgelu", "tiny": "tiny"}
PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def build(shape: str, stage: str, attn: str, dtype: torch.dtype, device: str):
    from transformers import LlamaConfig

    from llava_lite.config import ModelConfig, VisionConfig
    from llava_lite.model.random import random_llava
    from llava_lite.train.distributed import run_vision_every_step

    cfg = ModelConfig(vision=VisionConfig(model=VITS[shape], pretrained=None), lm="random",
                      dtype=str(dtype).split(".")[-1])
    lm_cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=4096)
    model = random_llava(cfg, lm_cfg, device=device, attn=attn)  # token ids only: the image token is the last id
    model.lm.requires_grad_(stage == "instruct")
    if stage == "instruct":  # fp32 masters, as the trainer keeps them
        model.lm.float()
    run_vision_every_step(model)
    model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return model


def batch(model, batch_size: int, seq: int, device: str) -> dict:
    p = model.image_seq_len
    size = model.vision.visual.image_size
    h, w = size if isinstance(size, (tuple, list)) else (size, size)
    vocab = model.lm.config.vocab_size - 1
    ids = torch.randint(0, vocab, (batch_size, seq), device=device)
    ids[:, 1:1 + p] = model.image_token_id
    labels = ids.clone()
    labels[:, : 1 + p + (seq - 1 - p) // 2] = IGNORE_INDEX  # the second half of the text is the answer
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "pixel_values": torch.randn(batch_size, 3, h, w, device=device)}


def flops_per_sample(model, stage: str, seq: int) -> float:
    """6 x N per token through the LM and projector (forward + backward, stage 1 too: the gradient
    flows back through the frozen LM); the frozen ViT runs forward only: 2 x N_vit per patch."""
    count = lambda m: sum(p.numel() for p in m.parameters())
    return 6 * (count(model.lm) + count(model.projector)) * seq + 2 * count(model.vision) * model.image_seq_len


def run_row(shape: str, stage: str, attn: str, args) -> dict:
    dtype = getattr(torch, args.dtype)
    device = args.device
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build(shape, stage, attn, dtype, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    b = batch(model, args.batch_size, args.seq, device)
    autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
    times = []
    for step in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with autocast:
            out = model(**b)
        (out.loss_sum / out.num_tokens.clamp(min=1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    step_s = sorted(times)[len(times) // 2]
    samples = args.batch_size / step_s
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
        (v for k, v in PEAK.items() if cuda and k in torch.cuda.get_device_name()), float("nan"))
    row = {"shape": shape, "stage": stage, "attn": attn, "samples_per_s": samples, "tokens_per_s": samples * args.seq,
           "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
           "mfu": samples * flops_per_sample(model, stage, args.seq) / peak, "loss": float(out.loss.detach())}
    del model, opt, out
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m llava_lite.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--shapes", default="7b:align,1b:instruct", help="shape:stage pairs")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None)
    args = p.parse_args(argv)
    pairs = [x.split(":") if ":" in x else (x, "align") for x in args.shapes.split(",")]
    kernels = ["sdpa"]
    try:
        import flash_attn  # noqa: F401

        kernels.append("flash_attention_2")
    except ImportError:
        print("flash-attn is not installed: SDPA rows only")
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, {args.dtype}, "
              f"batch {args.batch_size} x {args.seq}")
    rows = [run_row(shape, stage, attn, args) for shape, stage in pairs for attn in kernels]
    print("| LM shape | stage | attention | samples/s | tokens/s | peak GiB | MFU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['shape']} | {r['stage']} | {r['attn']} | {r['samples_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['peak_gib']:.1f} | {r['mfu']:.1%} |")
    return rows


if __name__ == "__main__":
    main()
