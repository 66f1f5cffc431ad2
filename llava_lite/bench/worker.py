"""One side of `llava-lite bench`, in a process of its own: build, warm up, time, measure memory.

    python -m llava_lite.bench.worker '{"side": "lite", "shape": "tiny", ...}'   # prints one result line

side "hf": transformers' LlavaForConditionalGeneration, trained the way TRL trains it: batches in
data order (image and text-only samples mixed), right-padded to the longest, full logits, labels
-100 on prompt, image and pad positions, mean loss.
side "lite": llava-lite's training path: the modality/length batch sampler, its collator (padded
or packed), LlavaLite.forward (sparse head), AdamW from `optim.build_optimizer` and the Trainer's
step for one process (token-weighted loss_sum, clipping; autocast as the Trainer sets it). Rendering is skipped on both
sides (bench/setup.py make_samples gives rendered samples). Variants switch one lever each.
"""
from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from llava_lite.bench.setup import SHAPES, DataMix, bench_images, build_llava_lite, make_samples
from llava_lite.constants import IGNORE_INDEX

RESULT = "BENCH_RESULT "


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: RSS keeps what the allocator cached
        pass


class Memory:
    """Peak memory above the resting size after the first step: CPU RSS (the kernel's peak, reset
    through /proc/self/clear_refs) or CUDA max_memory_allocated."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def rest(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            _malloc_trim()  # freed memory back to the OS first, or the rest would include the first step's peak
            self.base = _status_kb("VmRSS") * 1024
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS

    def peak_mb(self) -> float:
        peak = torch.cuda.max_memory_allocated() if self.cuda else _status_kb("VmHWM") * 1024
        return (peak - self.base) / 2**20


def head_forward(model, mode: str, chunk: int = 1024):
    """LlavaLite.forward with another LM head: "full" (logits at every position, as HF does) or
    "chunked" (sparse, and the head + CE recomputed per chunk of supervised tokens in backward, so
    only one chunk's logits are ever held)."""
    from llava_lite.model.llava import LlavaOutput
    from llava_lite.model.packed_attention import decoder_kwargs

    def ce(weight, h, t):
        return F.cross_entropy((h @ weight.t()).float(), t, reduction="sum")

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, position_ids=None,
                segment_ids=None):
        embeds = self.embed(input_ids, pixel_values)
        layout = decoder_kwargs(self.lm, attention_mask, position_ids, segment_ids, embeds.dtype)
        hidden = self.lm.get_decoder()(inputs_embeds=embeds, use_cache=False, **layout).last_hidden_state
        weight = self.lm.get_output_embeddings().weight
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        if mode == "full":
            logits = (hidden[:, :-1] @ weight.t()).float()
            loss_sum = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                       reduction="sum")
        else:
            h, t = hidden[:, :-1][keep], targets[keep]
            loss_sum = sum(checkpoint(ce, weight, h[i:i + chunk], t[i:i + chunk], use_reentrant=False)
                           for i in range(0, len(t), chunk))
        n = keep.sum()
        return LlavaOutput(loss=loss_sum / n.clamp(min=1), loss_sum=loss_sum, num_tokens=n)

    return types.MethodType(forward, model)


def trl_collate(samples, pad_id: int) -> dict:
    """Right-pad to the longest sample of the batch (TRL's DataCollatorForVisionLanguageModeling)."""
    width = max(len(s.input_ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id)
    labels = torch.full((len(samples), width), IGNORE_INDEX)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for r, s in enumerate(samples):
        n = len(s.input_ids)
        ids[r, :n], labels[r, :n], mask[r, :n] = s.input_ids, s.labels, 1
    pixels = [s.pixel_values for s in samples if s.pixel_values is not None]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels,
            "pixel_values": torch.cat(pixels) if pixels else None}


def _float_trainables(module) -> None:
    for p in module.parameters():  # trainable weights in fp32 (masters), frozen ones in the load dtype
        if p.requires_grad:
            p.data = p.data.float()


def hf_side(model, samples, spec):
    """Convert to LlavaForConditionalGeneration (same weights) and return (batches, step)."""
    from transformers import LlavaForConditionalGeneration

    from llava_lite.interop.hf_llava import llava_config, llava_state

    config = llava_config(model)
    config.text_config._attn_implementation = model.lm.config._attn_implementation  # the same kernel as llava-lite
    state = llava_state(model, config)
    dtype = next(model.lm.parameters()).dtype
    with torch.device(spec["device"]):
        hf = LlavaForConditionalGeneration(config).to(dtype)
    hf.load_state_dict(state)
    del state
    hf.model.vision_tower.requires_grad_(False)  # frozen, as in LLaVA and llava-lite
    if spec["stage"] == "align":
        hf.model.language_model.requires_grad_(False)
        hf.lm_head.requires_grad_(False)
    if spec.get("grad_ckpt"):
        hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _float_trainables(hf)
    hf.train()
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec["lr"])
    b = spec["batch"]
    batches = (trl_collate(samples[i:i + b], model.tokenizer.pad_token_id) for i in range(0, len(samples), b))
    autocast = _autocast(spec)

    def step(batch):
        batch = {k: v.to(spec["device"]) if v is not None else None for k, v in batch.items()}
        with autocast():
            out = hf(**batch)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return batches, step


def _autocast(spec):
    """bf16 autocast with --dtype bfloat16 (as the Trainer does on CPU), none otherwise."""
    if spec["dtype"] == "bfloat16":
        return lambda: torch.autocast(spec["device"], dtype=torch.bfloat16)
    return contextlib.nullcontext


class _Samples(torch.utils.data.Dataset):
    def __init__(self, samples):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def lite_side(model, samples, spec):
    """llava-lite's batch sampler, collator (padded or packed), model and optimizer, with the
    Trainer's step (token-weighted loss_sum, clipping, AdamW); returns (batches, step)."""
    from torch.utils.data import DataLoader

    from llava_lite.config import Config
    from llava_lite.data.dataset import Collator
    from llava_lite.data.packing import PackingCollator
    from llava_lite.data.sampler import ModalityLengthBatchSampler
    from llava_lite.train.optim import build_optimizer
    from llava_lite.train.stages import STAGES, set_trainable

    cfg = Config()
    cfg.train.stage, cfg.train.lr, cfg.train.weight_decay = spec["stage"], spec["lr"], 0.0
    stage = STAGES[spec["stage"]]
    set_trainable(model, stage, log=lambda *a: None)
    if spec.get("grad_ckpt"):
        model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.get("head") in ("full", "chunked"):
        model.forward = head_forward(model, spec["head"])
    if spec.get("compile"):
        model.lm.model = torch.compile(model.lm.model, dynamic=True)
    _float_trainables(model)
    ds = _Samples(samples)
    group = spec.get("group", True)
    lengths = [len(s.input_ids) for s in samples] if group else [0] * len(samples)
    has_image = [s.pixel_values is not None for s in samples] if group else [False] * len(samples)
    sampler = ModalityLengthBatchSampler(lengths, has_image, spec["batch"], seed=0)
    pad = model.tokenizer.pad_token_id
    collate = PackingCollator(pad, spec["max_length"]) if spec.get("packing") else Collator(pad)
    loader = DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    optimizer = build_optimizer(model, stage, cfg.train)
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = _autocast(spec)
    model.train()

    def step(batch):
        """Trainer._step for one process and one micro-batch: loss_sum / supervised tokens."""
        batch = tr_batch(batch, spec["device"])
        total = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        with autocast():
            out = model(**{k: v for k, v in batch.items() if k != "num_skipped"})
        (out.loss_sum / max(total, 1)).backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return iter(loader), step


def tr_batch(batch, device):
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def run(spec: dict) -> dict:
    """Train `spec["warmup"]` + `spec["steps"]` steps of one side; throughput over the timed steps."""
    torch.manual_seed(0)
    shape = dict(SHAPES[spec["shape"]], **spec.get("overrides", {}))
    spec["batch"] = spec.get("batch") or shape["batch"]
    dtype = getattr(torch, spec["dtype"])
    model = build_llava_lite(shape, spec["vit_ref"], dtype=dtype, device=spec["device"], anyres=spec.get("anyres", 0))
    n = spec["batch"] * (spec["warmup"] + spec["steps"])
    mix = DataMix(n=n, text_fraction=spec["text_fraction"], prompt_len=tuple(spec["prompt_len"]),
                  answer_len=tuple(spec["answer_len"]), images_per_sample=spec["images_per_sample"])
    tokens, crops, size = bench_images(spec, shape)
    samples = make_samples(mix, tokens, shape["image"], shape["vocab"], crops, size)
    batches, step = (hf_side if spec["side"] == "hf" else lite_side)(model, samples, spec)
    sync = torch.cuda.synchronize if spec["device"] == "cuda" else (lambda: None)
    mem = Memory(spec["device"])
    warm, timed = [], {"s": 0.0, "cpu_s": 0.0, "samples": 0, "tokens": 0, "positions": 0, "supervised": 0, "steps": 0}
    start = time.perf_counter()
    for i in range(10**9):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = next(batches, None)
        if batch is None:
            break
        step(batch)
        sync()
        dt = time.perf_counter() - t0
        if i == 0:
            mem.rest()
        if i < spec["warmup"]:
            warm.append(dt)
            continue
        mask = batch["attention_mask"]
        timed["s"] += dt
        timed["cpu_s"] += time.process_time() - c0
        timed["steps"] += 1
        packed = "position_ids" in batch  # a packed row holds several samples, each starting at position 0
        timed["samples"] += int(((batch["position_ids"] == 0) & (mask == 1)).sum()) if packed else mask.shape[0]
        timed["tokens"] += int(mask.sum())
        timed["positions"] += mask.numel()
        timed["supervised"] += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    s = max(timed["s"], 1e-9)
    return {
        "samples_per_s": timed["samples"] / s, "tokens_per_s": timed["tokens"] / s,
        "samples_per_cpu_s": timed["samples"] / max(timed["cpu_s"], 1e-9),  # steadier on a shared machine
        "padding": 1 - timed["tokens"] / max(timed["positions"], 1), "peak_mb": mem.peak_mb(),
        "step_s": s / max(timed["steps"], 1), "warmup_s": sum(warm), "timed_steps": timed["steps"],
        "samples": timed["samples"], "tokens": timed["tokens"], "supervised": timed["supervised"],
        "total_s": time.perf_counter() - start,
    }


if __name__ == "__main__":
    result = run(json.loads(sys.argv[1]))
    print(RESULT + json.dumps(result), flush=True)
