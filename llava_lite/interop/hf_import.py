"""Import LLaVA checkpoints into llava-lite model directories (which layout a path holds is told by
sources.detect; `sources.import_dir(path, out_dir)` picks the importer):

    import_hf_llava(path, out_dir)        a llava-hf directory (Llava or LLaVA-NeXT) -> llava-lite directory
    import_llava_llama(path, out_dir)     a LLaVA `llava_llama` directory -> llava-lite directory
    load_llava_projector(model, path)     LLaVA-1.5 stage-1 `mm_projector.bin` -> model.projector

What cannot be represented is one UnsupportedCheckpoint (a ModelLoadError) naming the setting.

llava-hf (LlavaForConditionalGeneration + processor): CLIPVisionModel is mapped back to an open_clip
local-dir tower, linear_1/gelu/linear_2 to mlp2x_gelu (act "linear" folds to one `linear`),
vision_feature_layer / select_strategy / LlavaImageProcessor.do_pad to layer / use_cls / pad_to_square;
LLaVA-NeXT's image_grid_pinpoints and image_newline to vision.anyres and the AnyRes projector's newline.
llava_llama (haotian-liu/LLaVA): the Llama weights are the LM, `model.mm_projector.*` the projector,
`mm_vision_tower` names the open_clip tower (`vision_tower=` overrides it, e.g. a local dir offline;
the checkpoint's own `model.vision_tower.*` copy of the frozen CLIP is not read),
`mm_vision_select_layer` is an HF hidden_states index like vision_feature_layer, and
image_aspect_ratio "pad" is pad_to_square. The directory is written by LlavaLite.save_pretrained.
"""
from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.errors import ModelLoadError
from llava_lite.interop.hf_clip import from_hf_layer, write_open_clip_dir
from llava_lite.model.hf_tower import preprocess_from_hf

# LLaVA's tower names -> (open_clip model, pretrained tag); OpenAI weights need QuickGELU.
TOWERS = {
    "openai/clip-vit-large-patch14-336": ("ViT-L-14-336-quickgelu", "openai"),
    "openai/clip-vit-large-patch14": ("ViT-L-14-quickgelu", "openai"),
    "openai/clip-vit-base-patch16": ("ViT-B-16-quickgelu", "openai"),
    "openai/clip-vit-base-patch32": ("ViT-B-32-quickgelu", "openai"),
}
SELECT_FEATURE = {"patch": False, "cls_patch": True}  # mm_vision_select_feature -> use_cls
LLAVA_KEYS = {"image_aspect_ratio", "image_grid_pinpoints", "tokenizer_padding_side", "tokenizer_model_max_length",
              "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter", "use_mm_proj", "unfreeze_mm_vision_tower",
              "architectures", "model_type", "vision_tower"}


class UnsupportedCheckpoint(ModelLoadError, ValueError):
    """A LLaVA checkpoint, or a setting in it, that llava-lite cannot represent; the message names it."""


def projector_weights(path: Path) -> dict:
    """LLaVA's `mm_projector.*` weights in a .bin / .safetensors file, keys without the prefix ({} if none)."""
    return _projector_keys(_load_weights([path]))


def load_llava_projector(model, path) -> None:
    """Load LLaVA's stage-1 projector (`model.mm_projector.0.weight` ...) into `model.projector`, strictly."""
    path = Path(path)
    state = projector_weights(path / "mm_projector.bin" if path.is_dir() else path)
    if not state:
        raise UnsupportedCheckpoint(f"{path} holds no mm_projector.* weights")
    ours = model.projector.state_dict()
    if set(state) != set(ours) or any(state[k].shape != ours[k].shape for k in ours):
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        raise UnsupportedCheckpoint(f"{path}: projector weights {shapes} do not fit projector={model.cfg.projector!r} "
                         f"{ {k: tuple(v.shape) for k, v in ours.items()} }")
    model.projector.load_state_dict(state)


def _projector_keys(state: dict) -> dict:
    return {k.split("mm_projector.", 1)[1]: v for k, v in state.items() if "mm_projector." in k}


def _load_weights(files: list[Path]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state = {}
    for f in files:
        if f.suffix == ".safetensors":
            state |= load_file(str(f))
        else:
            state |= torch.load(f, map_location="cpu", weights_only=True)
    return state


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise UnsupportedCheckpoint(f"{path}: no *.safetensors or pytorch_model*.bin weights")
    return files


def _dtype_name(config, base_cfg) -> str:
    if base_cfg is not None:
        return base_cfg.dtype
    name = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    name = name.removeprefix("torch.")
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def _meta_lm(text_config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # names and shapes only, no memory
        return AutoModelForCausalLM.from_config(text_config)


def _write_lm(text_config, state: dict[str, torch.Tensor], tokenizer, out: Path, source: Path) -> None:
    """A causal-LM directory from its config and weights named as AutoModelForCausalLM names them
    (checked against a meta-device instance), plus the tokenizer."""
    from huggingface_hub import save_torch_state_dict

    ref = _meta_lm(text_config)
    expected = set(ref.state_dict())
    head = next(n for n, m in ref.named_modules() if m is ref.get_output_embeddings()) + ".weight"
    if getattr(text_config, "tie_word_embeddings", False):
        expected.discard(head)
        state = {k: v for k, v in state.items() if k != head}
    if set(state) != expected:
        raise UnsupportedCheckpoint(
            f"{source}: LM weights do not match {type(ref).__name__}: missing {sorted(expected - set(state))[:5]}, "
            f"unexpected {sorted(set(state) - expected)[:5]}")
    out.mkdir(parents=True)
    text_config.save_pretrained(out)
    save_torch_state_dict({k: v.detach().contiguous() for k, v in state.items()}, out)
    tokenizer.save_pretrained(out)


def _assemble(staging: Path, out_dir: Path, base_cfg, vision, hf_layer: int, projector: str, projector_state, dtype):
    """Build the LlavaLite from the staged LM and tower, load the projector, save it as a directory."""
    from llava_lite.config import ModelConfig
    from llava_lite.model.llava import LlavaLite

    cfg = copy.deepcopy(base_cfg) if base_cfg is not None else ModelConfig()
    cfg.vision, cfg.projector, cfg.lm, cfg.dtype, cfg.init_from = vision, projector, str(staging / "lm"), dtype, None
    cfg.render_mode, cfg.system_prompt = "chat", None  # the template carries the checkpoint's prompt format
    model = LlavaLite.build(cfg)
    visual = model.vision.visual
    blocks = visual.num_blocks if model.vision.is_hf else len(visual.transformer.resblocks)
    model.vision.cfg.layer = from_hf_layer(hf_layer, blocks)
    model.projector.load_state_dict(projector_state)
    model.lm_weights = "full"  # the LM is written into the directory, not referenced
    return model.save_pretrained(out_dir)


def _set_template(tokenizer, name: str | None, source: Path) -> None:
    """Apply a named template; then the tokenizer must render string content with an image token
    (llava-lite passes "<image>\\n..." strings; llava-hf templates often take typed content only)."""
    if name:
        from llava_lite.data.templates import set_chat_template

        set_chat_template(tokenizer, name)
    probe = [{"role": "user", "content": "<image>\nQ_PROBE"}, {"role": "assistant", "content": "A_PROBE"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False) if tokenizer.chat_template else ""
    except Exception:
        text = ""
    if not all(s in text for s in (IMAGE_TOKEN, "Q_PROBE", "A_PROBE")):
        raise UnsupportedCheckpoint(
            f"{source}: the tokenizer's chat template is missing or does not render string content; "
            "pass chat_template= (in a run config: data.chat_template), a llava_lite.data.templates name "
            "such as vicuna_v1 or a .jinja file")


def import_hf_llava(path: Path, out_dir: Path, base_cfg=None, chat_template: str | None = None) -> Path:
    """Write the llava-hf directory `path` as a llava-lite model directory `out_dir`; returns it.
    base_cfg (a ModelConfig) supplies dtype and attn_implementation; chat_template (a templates.py
    name or .jinja path) replaces the tokenizer's."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoTokenizer,
        LlavaForConditionalGeneration,
        LlavaNextForConditionalGeneration,
    )

    from llava_lite.config import AnyresConfig, VisionConfig

    next_ = AutoConfig.from_pretrained(path).model_type == "llava_next"  # LLaVA-NeXT: AnyRes
    hf = (LlavaNextForConditionalGeneration if next_ else LlavaForConditionalGeneration).from_pretrained(
        path, dtype="auto").eval()
    cfg = hf.config
    if not isinstance(cfg.vision_feature_layer, int):
        raise UnsupportedCheckpoint(
            f"{path}: vision_feature_layer={cfg.vision_feature_layer}: llava-lite takes features from one layer")
    siglip = cfg.vision_config.model_type == "siglip_vision_model"
    if cfg.vision_config.model_type != "clip_vision_model" and not siglip:
        raise UnsupportedCheckpoint(f"{path}: vision tower {cfg.vision_config.model_type!r}: llava-lite reads "
                                    "CLIPVisionModel and SiglipVisionModel towers")
    base = getattr(hf, "model", hf)
    l1, l2 = base.multi_modal_projector.linear_1, base.multi_modal_projector.linear_2
    b1 = l1.bias if l1.bias is not None else torch.zeros(l1.out_features, dtype=l1.weight.dtype)
    b2 = l2.bias if l2.bias is not None else torch.zeros(l2.out_features, dtype=l2.weight.dtype)
    if cfg.projector_hidden_act == "gelu":
        projector, proj_state = "mlp2x_gelu", {"0.weight": l1.weight, "0.bias": b1, "2.weight": l2.weight, "2.bias": b2}
    elif cfg.projector_hidden_act == "linear":  # linear_2(linear_1(x)) folds into one Linear (exact if linear_2 = I)
        projector, proj_state = "linear", {"weight": l2.weight @ l1.weight, "bias": l2.weight @ b1 + b2}
    else:
        raise UnsupportedCheckpoint(
            f"{path}: projector_hidden_act={cfg.projector_hidden_act!r}: llava-lite projectors use gelu or none")
    anyres = AnyresConfig(grid_pinpoints=[list(p) for p in cfg.image_grid_pinpoints]) if next_ else None
    if next_:  # the projector module holds the newline (model/projector.py AnyresProjector)
        proj_state = {f"proj.{k}": v for k, v in proj_state.items()} | {"image_newline": base.image_newline}
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) != cfg.image_token_index:
        raise UnsupportedCheckpoint(
            f"{path}: the tokenizer's {IMAGE_TOKEN} is not image_token_index={cfg.image_token_index}")
    _set_template(tokenizer, chat_template, path)
    ip = AutoImageProcessor.from_pretrained(path, backend="pil").to_dict()
    vision_state = base.vision_tower.state_dict()
    vision_state = {k.removeprefix("vision_model."): v for k, v in vision_state.items()}
    ref = _meta_lm(cfg.text_config)
    names = {id(m): n for n, m in ref.named_modules()}
    text_state = {f"{names[id(ref.get_decoder())]}.{k}": v for k, v in base.language_model.state_dict().items()}
    text_state[names[id(ref.get_output_embeddings())] + ".weight"] = hf.get_output_embeddings().weight
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=out_dir) as tmp:
        staging = Path(tmp)
        if siglip:  # no open_clip form: the tower stays a transformers model (model/hf_tower.py)
            base.vision_tower.save_pretrained(staging / "vision")
            AutoImageProcessor.from_pretrained(path, backend="pil").save_pretrained(staging / "vision")
            tower = f"hf:{staging / 'vision'}"
        else:
            tower = write_open_clip_dir(vision_state, cfg.vision_config, preprocess_from_hf(ip), staging / "vision")
        _write_lm(cfg.text_config, text_state, tokenizer, staging / "lm", path)
        # "full" keeps CLIP's CLS token; a SigLIP tower has none to keep
        vision = VisionConfig(model=tower, pretrained=None, pad_to_square=_pads(ip), anyres=anyres,
                              use_cls=cfg.vision_feature_select_strategy == "full" and not siglip)
        dtype = _dtype_name(cfg.text_config, base_cfg)
        return _assemble(staging, out_dir, base_cfg, vision, cfg.vision_feature_layer, projector, proj_state, dtype)


def _pads(ip: dict) -> bool:
    """LlavaImageProcessor's do_pad is LLaVA's pad-to-square (other processors' do_pad is not)."""
    return str(ip.get("image_processor_type", "")).startswith("LlavaImageProcessor") and bool(ip.get("do_pad"))


def import_llava_llama(path: Path, out_dir: Path, base_cfg=None, vision_tower=None,
                       chat_template: str | None = None) -> Path:
    """Write the LLaVA `llava_llama` directory `path` as a llava-lite model directory `out_dir`; returns
    it. vision_tower overrides mm_vision_tower ("local-dir:/path", or an (open_clip name, pretrained tag)
    pair); chat_template as for import_hf_llava (default: the tokenizer's, else vicuna_v1)."""
    from transformers import AutoConfig, AutoTokenizer

    from llava_lite.config import VisionConfig

    raw = json.loads((path / "config.json").read_text())
    if raw.get("mm_use_im_start_end"):
        raise UnsupportedCheckpoint(
            f"{path}: mm_use_im_start_end=True: <im_start>/<im_end> around image features is not supported")
    aspect = raw.get("image_aspect_ratio") or "square"
    if aspect not in ("pad", "square"):
        raise UnsupportedCheckpoint(
            f"{path}: image_aspect_ratio={aspect!r}: only 'pad' (pad_to_square) and 'square' are supported")
    feature = raw.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURE:
        raise UnsupportedCheckpoint(f"{path}: mm_vision_select_feature={feature!r}: use 'patch' or 'cls_patch'")
    tower = str(raw.get("mm_vision_tower") or raw.get("vision_tower"))
    known = TOWERS.get(tower) or TOWERS.get("openai/" + Path(tower).name)  # a hub id or a local copy of one
    if vision_tower is None and known is None:
        raise UnsupportedCheckpoint(f"{path}: mm_vision_tower={tower!r} has no known open_clip equivalent: pass "
                                    "vision_tower= (in a run config: set model.vision to the tower)")
    if isinstance(vision_tower, str):
        known = (vision_tower, None)  # local-dir: carries its own weights
    model_name, pretrained = tuple(vision_tower) if isinstance(vision_tower, (tuple, list)) else known
    base_type = str(raw.get("model_type", "llava_llama")).removeprefix("llava_")
    fields = {("dtype" if k == "torch_dtype" else k): v for k, v in raw.items()
              if k not in LLAVA_KEYS and not k.startswith("mm_")}
    text_config = AutoConfig.for_model(base_type, **fields)
    state = _load_weights(_weight_files(path))
    proj_state = _projector_keys(state)
    lm_state = {k: v for k, v in state.items() if "mm_projector." not in k and not k.startswith("model.vision_tower.")}
    tokenizer = AutoTokenizer.from_pretrained(path, config=text_config)  # not config.json's llava_llama
    _set_template(tokenizer, chat_template or (None if tokenizer.chat_template else "vicuna_v1"), path)
    vision = VisionConfig(model=model_name, pretrained=pretrained, use_cls=SELECT_FEATURE[feature],
                          pad_to_square=aspect == "pad")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".import-", dir=out_dir) as tmp:
        staging = Path(tmp)
        _write_lm(text_config, lm_state, tokenizer, staging / "lm", path)
        dtype = _dtype_name(text_config, base_cfg)
        layer, projector = raw.get("mm_vision_select_layer", -2), raw.get("mm_projector_type", "linear")
        return _assemble(staging, out_dir, base_cfg, vision, layer, projector, proj_state, dtype)
