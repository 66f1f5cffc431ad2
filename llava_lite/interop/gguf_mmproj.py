"""The vision side of a LlavaLite (an open_clip CLIP or timm SigLIP ViT + mlp2x_gelu projector) as
llama.cpp's `mmproj` GGUF.

llama.cpp (libmtmd, tools/mtmd/models/llava.cpp) runs the ViT blocks up to the feature layer, drops
the CLS token when there is one and applies projector type `mlp`: `mm.0 -> GELU -> mm.2`, our
mlp2x_gelu. This writes the tower blocks up to `vision.layer` only, and names that layer explicitly
(`clip.vision.feature_layer`, counted as llama.cpp counts it: 0 is the encoder input, k the output of
block k-1). A SigLIP tower has no CLS token and no pre-LayerNorm: the graph skips absent tensors.

What has no form in that graph is refused with one FormatError naming the option: other projectors
(`linear` has no exact `mlp` form, since llama.cpp always applies GELU after mm.0), pixel shuffle, a kept
CLS token, an MLP as wide as the tower (clip.cpp would take its up and down weights for a legacy swapped
pair), `hf:` towers, and towers the transformers classes cannot hold (hf_clip.check_tower,
hf_siglip.check_siglip). Known differences, reported by the parity tests: llama.cpp's GELU is the tanh
approximation (exact for SigLIP's, approximate for CLIP's GELU; QuickGELU is exact), and it resizes and
pads images itself (bicubic, pad colour (122, 116, 104), the OpenAI CLIP mean).
"""
from __future__ import annotations

from pathlib import Path

import torch

from llava_lite.errors import FormatError
from llava_lite.interop.gguf_lm import file_type, write_tensors
from llava_lite.interop.hf_clip import check_tower, hidden_act
from llava_lite.interop.hf_siglip import check_siglip, is_timm_vit
from llava_lite.interop.hf_siglip import hidden_act as siglip_act

# The CLIP mean colour llama.cpp pads non-square images with (clip.cpp: image_pad_color for `mlp`).
LLAMA_CPP_PAD = (122, 116, 104)


def check_config(cfg) -> None:
    """Raise one FormatError naming every option of a ModelConfig the mmproj's llava graph cannot hold
    (read from the saved config, before any weight loads)."""
    vc, problems = cfg.vision, []
    if cfg.projector != "mlp2x_gelu":
        problems.append(f"projector={cfg.projector!r}: llama.cpp's `mlp` projector is mm.0 -> GELU -> mm.2 "
                        "(mlp2x_gelu); train with projector: mlp2x_gelu to export")
    if vc.pixel_shuffle > 1:
        problems.append(f"vision.pixel_shuffle={vc.pixel_shuffle}: the llava graph feeds every patch")
    if vc.use_cls:
        problems.append("vision.use_cls=True: the llava graph drops the CLS token")
    if vc.anyres is not None:
        problems.append("vision.anyres: the GGUF writer has no tiles, pinpoints or image_newline yet; "
                        "export AnyRes models to hf-llava (LlavaNextForConditionalGeneration)")
    if problems:
        raise FormatError("cannot export the vision side to GGUF: " + "; ".join(problems))


def check_vision(model) -> None:
    """check_config, then the tower itself (what a CLIP or SigLIP ViT graph cannot hold: hf_clip.check_tower,
    hf_siglip.check_siglip)."""
    check_config(model.cfg)
    visual = model.vision.visual
    if model.vision.is_hf:
        raise FormatError(f"vision.model={model.vision.cfg.model!r}: GGUF export writes open_clip and timm towers, "
                          "not hf: ones yet; export to hf-llava instead")
    check_siglip(visual) if is_timm_vit(visual) else check_tower(visual)
    block = blocks(model)[0]
    width, ffn = block.mlp.fc1.weight.shape[::-1] if is_timm_vit(visual) else block.mlp.c_fc.weight.shape[::-1]
    if ffn == width:
        raise FormatError(f"the tower's MLP is as wide as the tower ({width}): clip.cpp takes such an mmproj for a "
                          "legacy file with ffn_up and ffn_down swapped, so llama.cpp would run it wrong")
    feature_blocks(model)  # vision.layer in range, before anything is written


def padding_note(model) -> str | None:
    """What llama.cpp does differently to this model's non-square images, in one line (None: nothing)."""
    if not model.vision.cfg.pad_to_square:
        how = {"squash": "stretches", "longest": "resizes by the longer side of"}.get(
            model.vision.visual.preprocess_cfg.get("resize_mode"), "centre-crops")
        return (f"this model {how} non-square images (vision.pad_to_square is false) where llama.cpp pads "
                "them to square: its answers on non-square images will differ (square images are unaffected)")
    pad = tuple(int(m * 255) for m in model.vision.mean)
    if pad != LLAMA_CPP_PAD:
        return (f"this model pads non-square images with {pad}, llama.cpp with {LLAMA_CPP_PAD} (the OpenAI CLIP "
                "mean): its answers on non-square images may differ")
    return None


def blocks(model) -> list:
    visual = model.vision.visual
    return list(visual.trunk.blocks) if is_timm_vit(visual) else list(visual.transformer.resblocks)


def feature_blocks(model) -> int:
    """How many ViT blocks feed the projector (vision.layer, counted from 0 or from the end)."""
    n = len(blocks(model))
    layer = model.vision.cfg.layer
    if not -n <= layer < n:
        raise FormatError(f"vision.layer={layer} is out of range for a {n}-block tower")
    return (layer % n) + 1


def mmproj_tensors(model) -> dict[str, torch.Tensor]:
    """The tower's blocks up to the feature layer and the projector under clip.cpp's names."""
    n = feature_blocks(model)
    out = siglip_tensors(model, n) if is_timm_vit(model.vision.visual) else clip_tensors(model, n)
    proj = model.projector.state_dict()  # Sequential(Linear, GELU, Linear)
    return out | {"mm.0.weight": proj["0.weight"], "mm.0.bias": proj["0.bias"],
                  "mm.2.weight": proj["2.weight"], "mm.2.bias": proj["2.bias"]}


def clip_tensors(model, n: int) -> dict[str, torch.Tensor]:
    """An open_clip ViT: CLS, positions, pre-LayerNorm, blocks (fused in_proj split into q, k, v)."""
    sd = model.vision.visual.state_dict()
    out = {"v.patch_embd.weight": sd["conv1.weight"], "v.class_embd": sd["class_embedding"],
           "v.position_embd.weight": sd["positional_embedding"],
           "v.pre_ln.weight": sd["ln_pre.weight"], "v.pre_ln.bias": sd["ln_pre.bias"]}
    if model.vision.cfg.normalize:  # features pass the final LayerNorm, which llama.cpp applies as post_ln
        out |= {"v.post_ln.weight": sd["ln_post.weight"], "v.post_ln.bias": sd["ln_post.bias"]}
    pairs = (("ln_1", "ln1"), ("ln_2", "ln2"), ("attn.out_proj", "attn_out"), ("mlp.c_fc", "ffn_up"),
             ("mlp.c_proj", "ffn_down"))
    return out | block_tensors(sd, n, "transformer.resblocks", pairs, "attn.in_proj_")


def siglip_tensors(model, n: int) -> dict[str, torch.Tensor]:
    """A timm SigLIP ViT: biased patch convolution, positions, no CLS and no pre-LayerNorm (the llava graph
    skips both when their tensors are absent), blocks (fused qkv split into q, k, v)."""
    sd = model.vision.visual.trunk.state_dict()
    out = {"v.patch_embd.weight": sd["patch_embed.proj.weight"], "v.patch_embd.bias": sd["patch_embed.proj.bias"],
           "v.position_embd.weight": sd["pos_embed"][0]}
    if model.vision.cfg.normalize:
        out |= {"v.post_ln.weight": sd["norm.weight"], "v.post_ln.bias": sd["norm.bias"]}
    pairs = (("norm1", "ln1"), ("norm2", "ln2"), ("attn.proj", "attn_out"), ("mlp.fc1", "ffn_up"),
             ("mlp.fc2", "ffn_down"))
    return out | block_tensors(sd, n, "blocks", pairs, "attn.qkv.")


def block_tensors(sd: dict, n: int, blocks: str, pairs, qkv: str) -> dict[str, torch.Tensor]:
    """Blocks 0..n-1 of a ViT state `sd` (under `{blocks}.{i}.`) as clip.cpp's v.blk.{i}.*: the `pairs`
    renamed, the fused `{qkv}weight` / `{qkv}bias` split into attn_q, attn_k, attn_v."""
    out = {}
    for i in range(n):
        src, dst = f"{blocks}.{i}.", f"v.blk.{i}."
        for ours, theirs in pairs:
            out |= {f"{dst}{theirs}.{p}": sd[f"{src}{ours}.{p}"] for p in ("weight", "bias")}
        for name, w, b in zip("qkv", sd[f"{src}{qkv}weight"].chunk(3), sd[f"{src}{qkv}bias"].chunk(3)):
            out[f"{dst}attn_{name}.weight"], out[f"{dst}attn_{name}.bias"] = w, b
    return out


def write_mmproj(model, path: Path, outtype: str, name: str) -> Path:
    """Write the tower (up to the feature layer) and projector of `model` to `path`."""
    import gguf

    check_vision(model)
    visual = model.vision.visual
    block, pp = blocks(model)[0], visual.preprocess_cfg
    if is_timm_vit(visual):
        act, width, ffn, heads, eps = (siglip_act(visual.trunk), visual.trunk.embed_dim, block.mlp.fc1.out_features,
                                       block.attn.num_heads, block.norm1.eps)
    else:
        act, width, ffn, heads, eps = (hidden_act(visual), visual.transformer.width, block.mlp.c_fc.out_features,
                                       block.attn.num_heads, block.ln_1.eps)
    w = gguf.GGUFWriter(str(path), arch="clip")
    w.add_name(f"mmproj-{name}")
    w.add_file_type(file_type(outtype))
    w.add_bool("clip.has_vision_encoder", True)
    w.add_bool("clip.has_audio_encoder", False)
    w.add_string("clip.projector_type", "mlp")
    w.add_bool("clip.use_gelu", act != "quick_gelu")  # false: QuickGELU, llama.cpp's default for CLIP
    w.add_uint32("clip.vision.image_size", visual.image_size[0])
    w.add_uint32("clip.vision.patch_size", visual.image_size[0] // model.vision.grid_size[0])
    w.add_uint32("clip.vision.embedding_length", width)
    w.add_uint32("clip.vision.feed_forward_length", ffn)
    w.add_uint32("clip.vision.block_count", feature_blocks(model))
    w.add_uint32("clip.vision.projection_dim", model.projector[2].out_features)
    w.add_uint32("clip.vision.attention.head_count", heads)
    w.add_float32("clip.vision.attention.layer_norm_epsilon", eps)
    w.add_array("clip.vision.feature_layer", [feature_blocks(model)])
    w.add_array("clip.vision.image_mean", [float(m) for m in pp["mean"]])
    w.add_array("clip.vision.image_std", [float(s) for s in pp["std"]])
    # the patch convolution stays f16 (f32 at --outtype f32): ggml's im2col takes no bf16 or q8_0 kernel;
    # the embeddings stay f32
    conv = "f32" if outtype == "f32" else "f16"
    write_tensors(w, ((tname, t, outtype if tname.startswith(("v.blk.", "mm.")) else (conv if t.ndim == 4 else "f32"))
                      for tname, t in mmproj_tensors(model).items()))
    return path
