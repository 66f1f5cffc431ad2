"""open_clip VisionTransformer <-> transformers CLIPVisionModel: weights, config, feature layer and
image preprocessing, both ways.

The two towers compute the same function: conv patchify (no bias), CLS + learned positions,
pre-LayerNorm, pre-norm blocks (fused in_proj in open_clip = q/k/v_proj in HF), post-LayerNorm on
the pooled token only. Anything that has no CLIPVisionModel counterpart is refused with a
ValueError naming the option, instead of being exported as a different tower.

Feature layers: HF `hidden_states[0]` is the embeddings after pre_layrnorm and `hidden_states[i+1]`
is block i's output, so open_clip block index i >= 0 is HF index i+1, while negative indices
count from the same end in both (-1 = last block, -2 = penultimate).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from llava_lite.errors import FormatError
from llava_lite.model.hf_tower import RESAMPLE

# An imported tower still needs a text side for open_clip to build and load it; llava-lite never runs it.
TINY_TEXT = {"context_length": 2, "vocab_size": 8, "width": 8, "heads": 1, "layers": 1}


def hidden_act(visual: nn.Module) -> str:
    """The MLP activation of an open_clip tower, as a transformers ACT2FN name."""
    act = visual.transformer.resblocks[0].mlp.gelu
    name = type(act).__name__
    if name == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    raise FormatError(f"vision tower activation {name} (act_layer) has no CLIPVisionModel equivalent")


def check_tower(visual: nn.Module) -> None:
    """Raise a ValueError naming the first open_clip option CLIPVisionModel cannot hold."""
    if type(visual).__name__ != "VisionTransformer":
        raise FormatError(f"vision tower {type(visual).__name__} is not an open_clip ViT: "
                          "only ViTs map to CLIPVisionModel")
    block = visual.transformer.resblocks[0]
    if type(block).__name__ != "ResidualAttentionBlock":
        raise FormatError("vision tower uses a custom attention block (block_type / qk_norm / scaled_cosine_attn / "
                          "scale_*), which CLIPVisionModel does not have")
    if not isinstance(block.ls_1, nn.Identity) or not isinstance(block.ls_2, nn.Identity):
        raise FormatError("vision tower has layer scale (ls_1/ls_2, ls_init_value), "
                          "which CLIPVisionModel does not have")
    if getattr(visual, "attn_pool", None) is not None:
        raise FormatError("vision tower has attention pooling (attn_pool, attentional_pool), "
                          "which CLIPVisionModel does not have")
    if isinstance(visual.ln_pre, nn.Identity):
        raise FormatError("vision tower has no pre-LayerNorm (no_ln_pre), which CLIPVisionModel always applies")
    if len(set(visual.image_size)) != 1 or len(set(visual.patch_size)) != 1:
        raise FormatError(f"vision tower image_size {visual.image_size} / patch_size {visual.patch_size} "
                          "is not square; CLIPVisionConfig holds one side")
    hidden_act(visual)


def clip_config(visual: nn.Module):
    """open_clip ViT -> CLIPVisionConfig (after check_tower)."""
    from transformers import CLIPVisionConfig

    block = visual.transformer.resblocks[0]
    width = visual.transformer.width
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(visual.transformer.resblocks), num_attention_heads=block.attn.num_heads,
        image_size=visual.image_size[0], patch_size=visual.patch_size[0],
        hidden_act=hidden_act(visual), layer_norm_eps=block.ln_1.eps, projection_dim=visual.output_dim,
    )


def to_hf_state(visual: nn.Module) -> dict[str, torch.Tensor]:
    """open_clip visual state -> CLIPVisionTransformer state (keys as under `vision_model.`)."""
    sd = visual.state_dict()
    out = {
        "embeddings.patch_embedding.weight": sd["conv1.weight"],  # [width, 3, p, p], no bias in either
        "embeddings.class_embedding": sd["class_embedding"],  # [width]
        "embeddings.position_embedding.weight": sd["positional_embedding"],  # [1 + grid*grid, width]
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out |= {f"{theirs}.{p}": sd[f"{ours}.{p}"] for p in ("weight", "bias")}
    pairs = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for i in range(len(visual.transformer.resblocks)):
        src, dst = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in pairs:
            out |= {f"{dst}{theirs}.{p}": sd[f"{src}{ours}.{p}"] for p in ("weight", "bias")}
        weights = sd[f"{src}attn.in_proj_weight"].chunk(3)  # [3*width, width] -> q, k, v
        biases = sd[f"{src}attn.in_proj_bias"].chunk(3)
        for name, w, b in zip("qkv", weights, biases):
            # clones: views of one in_proj tensor would share storage, which safetensors refuses
            out[f"{dst}self_attn.{name}_proj.weight"], out[f"{dst}self_attn.{name}_proj.bias"] = w.clone(), b.clone()
    return {k: v.detach().contiguous() for k, v in out.items()}


def from_hf_state(state: dict[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """CLIPVisionTransformer state (keys as under `vision_model.`) -> open_clip visual state, less `proj`."""
    out = {
        "conv1.weight": state["embeddings.patch_embedding.weight"],
        "class_embedding": state["embeddings.class_embedding"],
        "positional_embedding": state["embeddings.position_embedding.weight"],
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out |= {f"{ours}.{p}": state[f"{theirs}.{p}"] for p in ("weight", "bias")}
    pairs = (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
             ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for i in range(num_layers):
        dst, src = f"transformer.resblocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in pairs:
            out |= {f"{dst}{ours}.{p}": state[f"{src}{theirs}.{p}"] for p in ("weight", "bias")}
        for p, key in (("weight", "in_proj_weight"), ("bias", "in_proj_bias")):
            out[f"{dst}attn.{key}"] = torch.cat([state[f"{src}self_attn.{n}_proj.{p}"] for n in "qkv"])
    return out


def to_hf_layer(layer: int, num_layers: int) -> int:
    """open_clip block index (negative from the end) -> HF hidden_states index."""
    if not -num_layers <= layer < num_layers:
        raise FormatError(f"vision.layer={layer} is out of range for a {num_layers}-block tower")
    return layer if layer < 0 else layer + 1


def from_hf_layer(index: int, num_layers: int) -> int:
    """HF hidden_states index -> open_clip block index; the embeddings (index 0) are not a block output."""
    if index == 0 or index == -(num_layers + 1):
        raise FormatError(f"vision_feature_layer={index} selects the embeddings, not a block output: "
                          "open_clip features come from blocks")
    if not -num_layers <= index <= num_layers:
        raise FormatError(f"vision_feature_layer={index} is out of range for a {num_layers}-block tower")
    return index if index < 0 else index - 1


def image_processor_kwargs(preprocess_cfg: dict, image_size: int) -> dict:
    """open_clip eval preprocessing -> CLIPImageProcessor / LlavaImageProcessor kwargs."""
    size = preprocess_cfg.get("size", image_size)
    side = size if isinstance(size, int) else size[0]
    if not isinstance(size, int) and len(set(size)) != 1:
        raise FormatError(f"image preprocessing size {size} is not square: the image processor crops one size")
    mode, interp = preprocess_cfg.get("resize_mode", "shortest"), preprocess_cfg.get("interpolation", "bicubic")
    if interp not in RESAMPLE:
        raise FormatError(f"image preprocessing interpolation={interp!r} has no CLIPImageProcessor resample")
    if preprocess_cfg.get("mode", "RGB") != "RGB":
        raise FormatError(f"image preprocessing mode={preprocess_cfg['mode']!r}: the image processor makes RGB")
    kw = dict(resample=RESAMPLE[interp], image_mean=list(preprocess_cfg["mean"]), image_std=list(preprocess_cfg["std"]),
              do_resize=True, do_rescale=True, rescale_factor=1 / 255, do_normalize=True, do_convert_rgb=True)
    if mode == "shortest":  # resize the shorter side, then centre crop
        return kw | dict(size={"shortest_edge": side}, crop_size={"height": side, "width": side}, do_center_crop=True)
    if mode == "squash":  # resize both sides, no crop
        return kw | dict(size={"height": side, "width": side}, do_center_crop=False)
    raise FormatError(f"image preprocessing resize_mode={mode!r} (resize longest side and pad) "
                      "cannot be reproduced by CLIPImageProcessor")


def write_open_clip_dir(state: dict[str, torch.Tensor], config, preprocess_cfg: dict, out_dir: Path) -> str:
    """CLIPVisionModel weights + config -> an open_clip local-dir tower (open_clip_config.json +
    open_clip_model.safetensors, what VisionTower.save_local writes). Returns its `local-dir:` ref."""
    import open_clip
    from safetensors.torch import save_file

    if config.hidden_act not in ("gelu", "quick_gelu", "gelu_pytorch_tanh"):
        raise FormatError(f"vision hidden_act={config.hidden_act!r} has no open_clip act_layer")
    width, inter = config.hidden_size, config.intermediate_size
    vision = {"image_size": config.image_size, "patch_size": config.patch_size, "width": width,
              "layers": config.num_hidden_layers, "head_width": width // config.num_attention_heads,
              "mlp_ratio": inter / width}
    if int(width * vision["mlp_ratio"]) != inter:
        raise FormatError(f"vision intermediate_size={inter} is not reachable as int(width * mlp_ratio) in open_clip")
    if config.layer_norm_eps != 1e-5:
        vision["norm_kwargs"] = {"eps": config.layer_norm_eps}
    if config.hidden_act == "gelu_pytorch_tanh":
        vision["act_kwargs"] = {"approximate": "tanh"}
    if preprocess_cfg.get("image_size", config.image_size) != config.image_size:
        raise FormatError(f"images are preprocessed to {preprocess_cfg['image_size']} "
                          f"but the tower takes {config.image_size}")
    cfg = {"model_cfg": {"embed_dim": config.projection_dim, "quick_gelu": config.hidden_act == "quick_gelu",
                         "vision_cfg": vision, "text_cfg": TINY_TEXT}, "preprocess_cfg": preprocess_cfg}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    clip = open_clip.create_model(f"local-dir:{out_dir}")  # random; the visual weights replace it below
    visual = from_hf_state(state, config.num_hidden_layers)
    visual["proj"] = clip.visual.proj.detach()  # the contrastive head: not used for LLaVA features
    clip.visual.load_state_dict(visual, strict=True)
    state = {k: v.detach().contiguous() for k, v in clip.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    return f"local-dir:{out_dir}"
