"""open_clip's timm-backed SigLIP towers -> transformers SiglipVisionModel (weights and config), for the
hf-llava export.

The two compute the same function: conv patchify (with bias), learned positions and no CLS token, no
pre-LayerNorm, pre-norm blocks (timm's fused qkv = q/k/v_proj), the final LayerNorm as post_layernorm.
The attention-pool head is not exported (`vision_use_head: false`): LLaVA reads a block's output, never
the pooled one. Anything SiglipVisionModel cannot hold (a CLS or register token, a pre-norm, layer scale,
q/k norms) is refused with a FormatError naming it. Feature layers count as for CLIP (hf_clip.py):
hidden_states[0] is the embeddings, hidden_states[i + 1] block i's output.
"""
from __future__ import annotations

import torch
from torch import nn

from llava_lite.errors import FormatError


def is_timm_vit(visual: nn.Module) -> bool:
    trunk = getattr(visual, "trunk", None)
    return trunk is not None and type(trunk).__name__ == "VisionTransformer"


def hidden_act(trunk: nn.Module) -> str:
    act = trunk.blocks[0].mlp.act
    name = type(act).__name__
    if name == "GELUTanh" or (isinstance(act, nn.GELU) and act.approximate == "tanh"):
        return "gelu_pytorch_tanh"
    if isinstance(act, nn.GELU) or name == "GELU":
        return "gelu"
    if name == "QuickGELU":
        return "quick_gelu"
    raise FormatError(f"vision tower activation {name} has no SiglipVisionModel equivalent")


def check_siglip(visual: nn.Module) -> None:
    """Raise a FormatError naming the first timm ViT option SiglipVisionModel cannot hold."""
    if not is_timm_vit(visual):
        raise FormatError(f"vision tower {type(visual).__name__} is neither an open_clip ViT nor a timm ViT: "
                          "it maps to no transformers vision model")
    trunk = visual.trunk
    if trunk.num_prefix_tokens:
        raise FormatError(f"vision tower has {trunk.num_prefix_tokens} prefix (CLS / register) token(s): "
                          "SiglipVisionModel has none")
    block = trunk.blocks[0]
    if not isinstance(trunk.norm_pre, nn.Identity):
        raise FormatError("vision tower has a pre-LayerNorm (norm_pre), which SiglipVisionModel does not apply")
    if not (isinstance(block.ls1, nn.Identity) and isinstance(block.ls2, nn.Identity)):
        raise FormatError("vision tower has layer scale (ls1/ls2), which SiglipVisionModel does not have")
    if not (isinstance(block.attn.q_norm, nn.Identity) and isinstance(block.attn.k_norm, nn.Identity)):
        raise FormatError("vision tower normalises q and k (qk_norm), which SiglipVisionModel does not")
    if getattr(trunk.patch_embed, "proj", None) is None or trunk.patch_embed.proj.bias is None:
        raise FormatError("vision tower's patch embedding has no biased convolution, unlike SiglipVisionModel's")
    if getattr(trunk, "pos_embed", None) is None:
        raise FormatError("vision tower has no learned position embedding (pos_embed), unlike SiglipVisionModel")
    if block.attn.qkv.bias is None:
        raise FormatError("vision tower's attention has no q/k/v bias (qkv_bias), unlike SiglipVisionModel's")
    if not (isinstance(getattr(block.attn, "norm", nn.Identity()), nn.Identity)
            and isinstance(getattr(block.mlp, "norm", nn.Identity()), nn.Identity)):
        raise FormatError("vision tower normalises inside attention or MLP (scale_attn_norm / scale_mlp_norm), "
                          "which SiglipVisionModel does not")
    if isinstance(trunk.norm, nn.Identity):
        raise FormatError("vision tower has no final LayerNorm (fc_norm instead), unlike SiglipVisionModel")
    if len(set(trunk.patch_embed.img_size)) != 1 or len(set(trunk.patch_embed.patch_size)) != 1:
        raise FormatError(f"vision tower image size {trunk.patch_embed.img_size} / patch size "
                          f"{trunk.patch_embed.patch_size} is not square; SiglipVisionConfig holds one side")
    hidden_act(trunk)


def siglip_config(visual: nn.Module):
    from transformers import SiglipVisionConfig

    trunk = visual.trunk
    block = trunk.blocks[0]
    return SiglipVisionConfig(
        hidden_size=trunk.embed_dim, intermediate_size=block.mlp.fc1.out_features,
        num_hidden_layers=len(trunk.blocks), num_attention_heads=block.attn.num_heads,
        image_size=trunk.patch_embed.img_size[0], patch_size=trunk.patch_embed.patch_size[0],
        hidden_act=hidden_act(trunk), layer_norm_eps=block.norm1.eps, vision_use_head=False,
    )


def to_hf_state(visual: nn.Module) -> dict[str, torch.Tensor]:
    """timm ViT state -> SiglipVisionTransformer state (keys as under `vision_model.`), without the head."""
    sd = visual.trunk.state_dict()
    out = {"embeddings.patch_embedding.weight": sd["patch_embed.proj.weight"],
           "embeddings.patch_embedding.bias": sd["patch_embed.proj.bias"],
           "embeddings.position_embedding.weight": sd["pos_embed"][0],
           "post_layernorm.weight": sd["norm.weight"], "post_layernorm.bias": sd["norm.bias"]}
    pairs = (("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.out_proj"),
             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2"))
    for i in range(len(visual.trunk.blocks)):
        src, dst = f"blocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in pairs:
            out |= {f"{dst}{theirs}.{p}": sd[f"{src}{ours}.{p}"] for p in ("weight", "bias")}
        for name, w, b in zip("qkv", sd[f"{src}attn.qkv.weight"].chunk(3), sd[f"{src}attn.qkv.bias"].chunk(3)):
            out[f"{dst}self_attn.{name}_proj.weight"], out[f"{dst}self_attn.{name}_proj.bias"] = w.clone(), b.clone()
    return {k: v.detach().contiguous() for k, v in out.items()}
