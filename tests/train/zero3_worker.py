"""Run by tests/train/test_distributed.py under torchrun (2 processes, DS_ACCELERATOR=cpu): DeepSpeed ZeRO-3
driven directly (accelerate cannot drive DeepSpeed without a GPU), over a tiny LlavaLite: mixed-modality
micro-batches, the engine's accumulation of 2 micro-batches, gradient clipping, the gathered save, and
a checkpoint without the frozen tower that loads back exactly."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import deepspeed
import torch

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers.tiny import make_llava_data

from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.data.dataset import Collator
from llava_lite.data.loader import dataset_for
from llava_lite.data.readers import read_conversations
from llava_lite.model.llava import LlavaLite
from llava_lite.train.distributed import run_vision_every_step, zero3_vision_leaf

LR, CLIP, GAS = 0.5, 0.05, 2


def main(lm: str, out: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    torch.manual_seed(0)
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=lm))
    model.vision.requires_grad_(False)
    run_vision_every_step(model)
    reference = copy.deepcopy(model)
    data = make_llava_data(Path(out) / f"data{rank}", n=4)
    convs = read_conversations(str(data["conversations"]), "auto", str(Path(out) / f"data{rank}" / "images"))
    ds = dataset_for(model, convs, 128, "chat", None)
    collate = Collator(model.tokenizer.pad_token_id)
    image, text = collate([ds[0], ds[1]]), collate([ds[4], ds[5]])
    per_rank = [[text, image], [image, text]]  # rank 0 text while rank 1 has images, then the other way
    strip = lambda b: {k: v for k, v in b.items() if k != "num_skipped"}
    total = sum(int((b["labels"][:, 1:] != -100).sum()) for r in per_rank for b in r)

    zero3_vision_leaf(model)
    params = [p for p in model.parameters() if p.requires_grad]
    config = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": GAS, "gradient_clipping": CLIP,
              "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
              "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(params, lr=LR), config=config)
    for batch in per_rank[rank]:
        loss = engine(**strip(batch)).loss_sum
        engine.backward(loss * world * GAS / total)  # as the trainer scales it under DeepSpeed
        engine.step()  # an optimizer step only at the accumulation boundary

    ref_params = [p for p in reference.parameters() if p.requires_grad]
    for batch in per_rank[0] + per_rank[1]:
        (reference(**strip(batch)).loss_sum / total).backward()
    norm = float(torch.nn.utils.clip_grad_norm_(ref_params, CLIP))
    torch.optim.SGD(ref_params, lr=LR).step()

    full = engine._zero3_consolidated_16bit_state_dict()  # what accelerate.get_state_dict gathers under ZeRO-3
    # the trainer's DeepSpeed checkpoint (checkpoints.py): frozen weights excluded, loaded back non-strictly
    engine.save_checkpoint(str(Path(out) / "ckpt"), tag="t", exclude_frozen_parameters=True)
    engine.save_checkpoint(str(Path(out) / "ckpt_all"), tag="t")
    torch.manual_seed(1)
    fresh = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=lm))
    fresh.vision.requires_grad_(False)
    fresh.load_state_dict({k: v for k, v in reference.state_dict().items() if k.startswith("vision.")}, strict=False)
    run_vision_every_step(fresh)
    zero3_vision_leaf(fresh)
    fresh_params = [p for p in fresh.parameters() if p.requires_grad]
    engine2, *_ = deepspeed.initialize(model=fresh, optimizer=torch.optim.SGD(fresh_params, lr=LR), config=config)
    engine2.load_checkpoint(str(Path(out) / "ckpt"), tag="t", load_module_strict=False)
    reloaded = engine2._zero3_consolidated_16bit_state_dict()
    size = lambda d: sum(f.stat().st_size for f in Path(out, d).rglob("*") if f.is_file())
    if rank == 0:
        ref_sd = reference.state_dict()
        shared = set(full) & set(ref_sd)
        diff = max(float((full[k].float() - ref_sd[k].float()).abs().max()) for k in shared)
        model.save_pretrained(Path(out) / "saved", state_dict=full, lm_dtype="float32")
        loaded = LlavaLite.from_pretrained(Path(out) / "saved", device="cpu")
        b = strip(image)
        b.pop("labels")
        with torch.no_grad():
            logit_diff = float((loaded(**b).logits - reference(**b).logits).abs().max())
        Path(out, "result.json").write_text(json.dumps({
            "state_diff": diff, "logit_diff": logit_diff, "ref_norm": norm, "missing": sorted(set(ref_sd) - set(full)),
            "steps": engine.global_steps, "engine_norm": float(engine.get_global_grad_norm()),
            "reload_diff": max(float((reloaded[k].float() - full[k].float()).abs().max()) for k in full),
            "bytes_excluded": size("ckpt"), "bytes_all": size("ckpt_all")}))
    torch.distributed.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
