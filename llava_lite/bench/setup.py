"""What `llava-lite bench` trains: model shapes, one random model built identically in every
process, the synthetic data both sides read, the model FLOPs of a step and the GEMM limit.

Every worker process builds the model from the same seed with the same code (no weights travel
between processes): the llava-lite side uses it as is, the baseline converts it to transformers'
LlavaForConditionalGeneration through the export (`hf_llava.llava_config` / `llava_state`), so
both start from the same LM, projector and vision weights.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.dataset import Sample

# LM: hidden, layers, heads, kv heads, ffn, vocab; ViT: width, layers, image px, patch; per-process batch.
SHAPES = {
    "micro": dict(hidden=64, layers=2, heads=4, kv_heads=2, ffn=128, vocab=512,  # for the tests
                  vit_width=64, vit_layers=2, image=32, patch=8, batch=4),
    "tiny": dict(hidden=256, layers=6, heads=4, kv_heads=4, ffn=688, vocab=8192,  # the CPU shape
                 vit_width=256, vit_layers=6, image=64, patch=8, batch=16),
    "1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, vocab=128256,  # Llama-3.2-1B, ViT-L/14-336
               vit_width=1024, vit_layers=24, image=336, patch=14, batch=8),
    "7b": dict(hidden=4096, layers=32, heads=32, kv_heads=32, ffn=11008, vocab=32000,  # Vicuna-7B, ViT-L/14-336
               vit_width=1024, vit_layers=24, image=336, patch=14, batch=8),
}
SPECIALS = ["<pad>", "<s>", "</s>", IMAGE_TOKEN]


@dataclass
class DataMix:
    n: int  # samples
    text_fraction: float = 0.3
    prompt_len: tuple[int, int] = (24, 47)  # inclusive ranges, text tokens
    answer_len: tuple[int, int] = (16, 31)
    images_per_sample: int = 1
    seed: int = 0


def write_vit_config(shape: dict, out_dir: Path) -> str:
    """An open_clip local-dir config (no weights: the tower is random, seeded) -> its reference."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": {"embed_dim": shape["vit_width"], "quick_gelu": True,
                         "vision_cfg": {"image_size": shape["image"], "layers": shape["vit_layers"],
                                        "width": shape["vit_width"], "head_width": 64, "patch_size": shape["patch"]},
                         "text_cfg": {"context_length": 2, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}},
           "preprocess_cfg": {"image_size": shape["image"], "mean": [0.48145466, 0.4578275, 0.40821073],
                              "std": [0.26862954, 0.26130258, 0.27577711]}}
    (out_dir / "open_clip_config.json").write_text(json.dumps(cfg))
    return f"local-dir:{out_dir}"


def make_tokenizer(vocab: int):
    """A word-level tokenizer of exactly `vocab` ids ("<pad>", "<s>", "</s>", "<image>", "w4", ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {w: i for i, w in enumerate(SPECIALS)} | {f"w{i}": i for i in range(len(SPECIALS), vocab)}
    tok = Tokenizer(models.WordLevel(words, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=[IMAGE_TOKEN])


def build_llava_lite(shape: dict, vit_ref: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
                     seed: int = 0, attn: str = "auto", anyres: int = 0):
    """The bench's LlavaLite, random and seeded (model/random.py): identical in every process that builds
    it. attn "auto": flash_attention_2 on CUDA in bf16 when flash-attn is installed, else SDPA."""
    from transformers import LlamaConfig

    from llava_lite.config import AnyresConfig, ModelConfig, VisionConfig
    from llava_lite.model.lm import pick_attention
    from llava_lite.model.random import random_llava

    attn = pick_attention(attn, dtype) if device == "cuda" else ("sdpa" if attn == "auto" else attn)
    tok = make_tokenizer(shape["vocab"])
    torch.manual_seed(seed)
    lm_cfg = LlamaConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["ffn"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    vision = VisionConfig(model=vit_ref, pretrained=None, anyres=AnyresConfig(max_tiles=anyres) if anyres else None)
    mcfg = ModelConfig(vision=vision, lm="bench-random",
                       dtype=str(dtype).removeprefix("torch."), attn_implementation=attn)
    model = random_llava(mcfg, lm_cfg, tok, device=device, attn=attn)
    model.projector.to(dtype)
    return model


def bench_images(spec: dict, shape: dict) -> tuple[int, int, tuple[int, int] | None]:
    """(image tokens, crops, size) of one bench image: the tower's patches, one crop; with spec["anyres"]
    (max tiles) a square image of spec["image_scale"] x the tower's size, tiled as AnyRes tiles it."""
    px, grid = shape["image"], shape["image"] // shape["patch"]
    if not spec.get("anyres"):
        return grid * grid, 1, None
    from llava_lite.config import AnyresConfig
    from llava_lite.model.anyres import Anyres

    layout = Anyres(AnyresConfig(max_tiles=spec["anyres"]), px, (grid, grid))
    size = (spec["image_scale"] * px, spec["image_scale"] * px)
    return layout.num_tokens(size), layout.num_tiles(size), size


def make_samples(mix: DataMix, image_seq_len: int, image_px: int, vocab: int, crops: int = 1,
                 image_size: tuple[int, int] | None = None) -> list[Sample]:
    """Random conversations already rendered: [<s>, images' placeholders, prompt] unsupervised, then
    the answer and </s> supervised. The same list in every process (seeded). AnyRes: `crops` tiles per
    image of `image_size`."""
    rng = random.Random(mix.seed)
    gen = torch.Generator().manual_seed(mix.seed)
    out = []
    for _ in range(mix.n):
        image = rng.random() >= mix.text_fraction
        n_img = mix.images_per_sample if image else 0
        prompt = [rng.randrange(len(SPECIALS), vocab) for _ in range(rng.randint(*mix.prompt_len))]
        answer = [rng.randrange(len(SPECIALS), vocab) for _ in range(rng.randint(*mix.answer_len))] + [2]
        head = [1] + [3] * (image_seq_len * n_img) + prompt
        ids = torch.tensor(head + answer)
        labels = torch.tensor([IGNORE_INDEX] * len(head) + answer)
        pixels = torch.randn(n_img * crops, 3, image_px, image_px, generator=gen) if n_img else None
        sizes = torch.tensor([image_size] * n_img) if n_img and image_size else None
        out.append(Sample(ids, labels, pixels, False, image_sizes=sizes))
    return out


def gemm_flops(n: int = 2048, dtype: torch.dtype = torch.float32, device: str = "cpu", seconds: float = 1.0) -> float:
    """Dense [n, n] @ [n, n] FLOP/s, the median of repeated timed runs: the machine's matmul limit."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    a @ b
    sync()
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return 2 * n**3 / times[len(times) // 2]


def step_flops(shape: dict, lengths: list[int], supervised: int, images: int, stage: str = "instruct") -> float:
    """Useful model FLOPs of one training step on samples of `lengths` real tokens: LM matmuls
    (forward 2, backward 4 per weight and token; 2 when the LM is frozen: no weight gradients),
    causal attention, the LM head on supervised tokens only, the frozen ViT (forward), the projector."""
    h, layers, ffn = shape["hidden"], shape["layers"], shape["ffn"]
    kv = shape["kv_heads"] * (h // shape["heads"])
    body = layers * (2 * h * h + 2 * h * kv + 3 * h * ffn)  # q, o, k, v, gate/up/down weights
    train_mul = 6 if stage != "align" else 4
    tokens = sum(lengths)
    attn = 3 * layers * 2 * h * sum(n * n for n in lengths)  # QK^T and AV, causal half, fwd + bwd
    head = 6 * h * shape["vocab"] * supervised
    patches = (shape["image"] // shape["patch"]) ** 2
    vit = 2 * 12 * shape["vit_layers"] * shape["vit_width"] ** 2 * (patches + 1) * images
    proj = 6 * (shape["vit_width"] * h + h * h) * patches * images
    return train_mul * body * tokens + attn + head + vit + proj
