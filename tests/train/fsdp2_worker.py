"""Run by tests/train/test_distributed.py under torchrun (2 processes, gloo): FSDP2 over a tiny LlavaLite,
mixed-modality micro-batches, gathered state dict, and the trainer's save code."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

sys.path.insert(0, str(Path(__file__).parents[1]))
from helpers.tiny import make_llava_data

from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.data.conversation import Conversation
from llava_lite.data.dataset import Collator
from llava_lite.data.loader import dataset_for
from llava_lite.data.readers import read_conversations
from llava_lite.model.llava import LlavaLite
from llava_lite.train.distributed import fsdp2_shard, load_trained_sharded, run_vision_every_step, save_trained_sharded


def main(lm: str, out: str) -> None:
    dist.init_process_group("gloo")
    results = {stage: run_stage(stage, lm, Path(out) / stage) for stage in ("instruct", "align")}
    if dist.get_rank() == 0:
        Path(out, "result.json").write_text(json.dumps(results))
    dist.barrier()
    dist.destroy_process_group()


def run_stage(stage: str, lm: str, out: Path) -> dict:
    """instruct: projector + LM train, rank 0 text-only while rank 1 has images; align: projector only."""
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=lm))
    model.vision.requires_grad_(False)
    model.lm.requires_grad_(stage == "instruct")
    run_vision_every_step(model)
    reference = copy.deepcopy(model)  # the unsharded model, trained on the whole global batch
    run_vision_every_step(reference)
    data = make_llava_data(out / f"data{rank}", n=4)
    convs: list[Conversation] = read_conversations(str(data["conversations"]), "auto",
                                                   str(out / f"data{rank}" / "images"))
    ds = dataset_for(model, convs, 128, "chat", None)
    collate = Collator(model.tokenizer.pad_token_id)
    image, text = collate([ds[0], ds[1]]), collate([ds[4], ds[5]])  # records 4, 5 are text-only
    assert image["pixel_values"] is not None and text["pixel_values"] is None
    # two micro-batches per rank; rank 0 runs text while rank 1 runs images, then the other way
    per_rank = [[text, image], [image, text]]
    if stage == "align":
        image2 = collate([ds[2], ds[3]])
        per_rank = [[image, image2], [image2, image]]
    fsdp2_shard(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ref_opt = torch.optim.AdamW([p for p in reference.parameters() if p.requires_grad], lr=1e-2)
    strip = lambda b: {k: v for k, v in b.items() if k != "num_skipped"}
    total = sum(int((b["labels"][:, 1:] != -100).sum()) for r in per_rank for b in r)
    losses = []
    for _step in range(2):
        loss = 0.0
        for batch in per_rank[rank]:
            out_ = model(**strip(batch))
            (out_.loss_sum * world / total).backward()  # FSDP averages over ranks
            loss += float(out_.loss_sum)
        opt.step()
        opt.zero_grad()
        ref_loss = 0.0
        for batch in per_rank[0] + per_rank[1]:
            r = reference(**strip(batch))
            (r.loss_sum / total).backward()
            ref_loss += float(r.loss_sum)
        ref_opt.step()
        ref_opt.zero_grad()
        t = torch.tensor(loss)
        dist.all_reduce(t)
        losses.append([float(t) / total, ref_loss / total])
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    # a checkpoint of what trains (the trainer's FSDP path: distributed.fsdp_trained_only), loaded into a fresh model
    parts = ("projector", "lm") if stage == "instruct" else ("projector",)
    (out / "ckpt").mkdir(parents=True, exist_ok=True)
    save_trained_sharded(model, out / "ckpt", parts)
    dist.barrier()
    torch.manual_seed(1)
    fresh = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=lm))
    fresh.vision.load_state_dict(reference.vision.state_dict())  # frozen: as loaded, never from a checkpoint
    fresh.vision.requires_grad_(False)
    fresh.lm.requires_grad_(stage == "instruct")
    load_trained_sharded(fsdp2_shard(fresh), out / "ckpt", parts)
    again = get_model_state_dict(fresh, options=options)
    if rank == 0:
        ref_sd = reference.state_dict()
        assert set(full) == set(ref_sd), set(full) ^ set(ref_sd)
        diff = max(float((full[k].float() - ref_sd[k].float()).abs().max()) for k in full)
        model.save_pretrained(out / "saved", state_dict=full, lm_dtype="float32")
        loaded = LlavaLite.from_pretrained(out / "saved", device="cpu")
        with torch.no_grad():
            b = strip(image)
            b.pop("labels")
            logit_diff = float((loaded(**b).logits - reference(**b).logits).abs().max())
        saved = load_file(str(out / "ckpt" / "model.safetensors"))
        return {"losses": losses, "state_diff": diff, "logit_diff": logit_diff, "lm_weights": loaded.lm_weights,
                "ckpt_parts": sorted({k.split(".")[0] for k in saved}),
                "reload_diff": max(float((again[k] - full[k]).abs().max()) for k in full)}
    return {}


if __name__ == "__main__":
    main(*sys.argv[1:])
