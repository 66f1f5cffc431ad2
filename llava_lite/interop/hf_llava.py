"""A LlavaLite as a transformers llava-hf directory: LlavaConfig, weights and LlavaProcessor (an AnyRes
model: LlavaNextConfig, LlavaNextForConditionalGeneration's weights and LlavaNextProcessor).

    write_hf_llava(model, out)   # then LlavaForConditionalGeneration / AutoProcessor.from_pretrained(out)

What maps: the open_clip ViT -> CLIPVisionModel (hf_clip.py), a timm SigLIP -> SiglipVisionModel
(hf_siglip.py), an `hf:` tower as it is; `vision.layer` -> vision_feature_layer; `use_cls` ->
vision_feature_select_strategy ("full" keeps CLS, "default" drops it; a tower without CLS is "full");
`mlp2x_gelu` -> linear_1 / gelu / linear_2; `linear` -> linear_1 = W with projector_hidden_act
"linear" and linear_2 = identity (zero bias), which computes W x + b exactly (x * 1 + 0s);
`pad_to_square` -> LlavaImageProcessor(do_pad=True), which pads with the same mean colour at the
same offsets; the chat template, system prompt and stop tokens -> the processor's chat template and
generation_config. What does not map raises one ValueError naming the option (check_exportable).

Preprocessing is reproduced exactly by the PIL backend (`AutoProcessor.from_pretrained(out,
backend="pil")`); the default torchvision backend resizes with its own antialiased bicubic (up to
1/255 per pixel off). Both backends floor the centre-crop offset where torchvision's CenterCrop
(open_clip) rounds it, so a non-padded image whose resized long side exceeds the crop by 4k+3
pixels is shifted by one pixel column.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.errors import FormatError
from llava_lite.interop.hf_clip import check_tower, clip_config, image_processor_kwargs, to_hf_layer, to_hf_state
from llava_lite.interop.hf_siglip import check_siglip, is_timm_vit, siglip_config
from llava_lite.interop.hf_siglip import to_hf_state as siglip_state
from llava_lite.log import logger
from llava_lite.model.lm import is_peft

PROJECTORS = {"mlp2x_gelu": "gelu", "linear": "linear"}  # llava-lite projector -> projector_hidden_act
# vLLM builds LlavaMultiModalProjector's activation with get_act_fn (model_executor/layers/activation.py), whose
# registry has no "linear"; with linear_1 and linear_2 shaped as HF Llava shapes them, no registered activation
# passes W x + b through exactly, so there is no vLLM form to write instead.
VLLM_LINEAR = ("this directory has projector_hidden_act 'linear', which transformers loads but vLLM does not "
               "(its get_act_fn has no 'linear'): train with projector mlp2x_gelu to serve with vLLM")


def prelude(image: str = IMAGE_TOKEN) -> str:
    """Put in front of the model's own template: typed content ({"type": "image"} / {"type": "text"},
    what LlavaProcessor.apply_chat_template passes) becomes the "<image>\\n..." strings llava-lite renders.
    With another `image` string (llama.cpp's media marker), "<image>" in string content becomes it, and an
    image_url part or a text part that is exactly the marker (how llama.cpp's clients pass an image) too."""
    swap = same = ""
    if image != IMAGE_TOKEN:
        swap = f".replace('{IMAGE_TOKEN}', '{image}')"
        same = f" or c['type'] == 'image_url' or (c['type'] == 'text' and c['text'] == '{image}')"
    return (
        "{%- set ns = namespace(msgs=[]) -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set text = m['content']" + swap + " -%}"
        "{%- else -%}{%- set parts = namespace(s='') -%}"
        "{%- for c in m['content'] -%}"
        "{%- if c['type'] == 'image'" + same + " -%}{%- set parts.s = parts.s + '" + image + "\\n' -%}"
        "{%- elif c['type'] == 'text' -%}{%- set parts.s = parts.s + c['text'] -%}{%- endif -%}"
        "{%- endfor -%}{%- set text = parts.s -%}{%- endif -%}"
        "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': text}] -%}"
        "{%- endfor -%}"
        "{%- set messages = ns.msgs -%}"
    )


PRELUDE = prelude()
# The model's default system prompt is added when the conversation has none.
SYSTEM = ("{%- if messages and messages[0]['role'] != 'system' -%}"
          "{%- set messages = [{'role': 'system', 'content': SYSTEM_PROMPT}] + messages -%}{%- endif -%}")
# Stage-1 (cfg.render_mode "plain") prompts: bos, then one <image> per image, no text.
PLAIN = ("{{ bos_token if bos_token else '' }}"
         "{% for m in messages %}{{ '<image>' * m['content'].count('<image>') }}{% endfor %}")


def check_exportable(model) -> None:
    """Raise one ValueError naming every model option HF Llava cannot hold (then the tower's first)."""
    vc, problems = model.vision.cfg, []
    if vc.pixel_shuffle > 1:
        problems.append(f"vision.pixel_shuffle={vc.pixel_shuffle}: HF Llava feeds every patch token, "
                        "it has no pixel shuffle")
    if vc.normalize:
        problems.append("vision.normalize=True: HF Llava feeds the chosen layer without the final LayerNorm (ln_post)")
    if model.cfg.projector not in PROJECTORS:
        problems.append(f"projector={model.cfg.projector!r}: HF Llava's projector is linear_1 -> act -> linear_2, "
                        "which holds mlp2x_gelu and linear only")
    if is_peft(model.lm):
        problems.append("the LM carries LoRA adapters (lm_adapter): merge them first (export merges them)")
    if problems:
        raise FormatError("cannot export to hf-llava: " + "; ".join(problems))
    visual = model.vision.visual
    if not model.vision.is_hf:  # a transformers tower is already what HF Llava holds
        check_siglip(visual) if is_timm_vit(visual) else check_tower(visual)
    image_processor_kwargs(visual.preprocess_cfg, visual.image_size[0])


def tower(model) -> tuple:
    """(vision config, number of blocks, whether the ViT sequence holds a CLS token) of the model's tower:
    an open_clip ViT as CLIPVisionModel, a timm SigLIP as SiglipVisionModel."""
    visual = model.vision.visual
    if model.vision.is_hf:
        config = copy.deepcopy(visual.model.config)
        if hasattr(config, "vision_use_head"):
            config.vision_use_head = False  # LLaVA reads a block's output, never the pooled one
        return config, visual.num_blocks, visual.has_cls
    if is_timm_vit(visual):
        return siglip_config(visual), len(visual.trunk.blocks), False
    return clip_config(visual), len(visual.transformer.resblocks), True


def tower_state(model) -> dict[str, torch.Tensor]:
    """The tower's weights under the transformers vision model's names (under `vision_model.`)."""
    visual = model.vision.visual
    if model.vision.is_hf:
        return {k: v.detach() for k, v in visual.model.state_dict().items() if not k.startswith("head.")}
    return siglip_state(visual) if is_timm_vit(visual) else to_hf_state(visual)


def projector_state(model) -> dict[str, torch.Tensor]:
    """llava-lite projector -> multi_modal_projector state (linear_1 / linear_2)."""
    sd = getattr(model.projector, "proj", model.projector).state_dict()  # AnyRes: the projector inside
    if model.cfg.projector == "mlp2x_gelu":  # Sequential(Linear, GELU, Linear)
        return {"linear_1.weight": sd["0.weight"], "linear_1.bias": sd["0.bias"],
                "linear_2.weight": sd["2.weight"], "linear_2.bias": sd["2.bias"]}
    w, b = sd["weight"], sd["bias"]  # linear: [hidden, width]; linear_2 passes it through unchanged
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    return {"linear_1.weight": w, "linear_1.bias": b, "linear_2.weight": eye, "linear_2.bias": torch.zeros_like(b)}


def llava_config(model):
    """LlavaConfig, or LlavaNextConfig for an AnyRes model (its pinpoints in image_grid_pinpoints)."""
    from transformers import LlavaConfig, LlavaNextConfig

    vision, blocks, cls = tower(model)
    text = copy.deepcopy(model.lm.config)
    text.vocab_size = model.lm.get_input_embeddings().weight.shape[0]
    anyres = model.vision.anyres
    config, extra = (LlavaConfig, {}) if anyres is None else (
        LlavaNextConfig, {"image_grid_pinpoints": [list(p) for p in anyres.pinpoints]})
    return config(
        **extra, vision_config=vision, text_config=text,
        image_token_index=model.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_length=model.vision.num_patches,
        projector_hidden_act=PROJECTORS[model.cfg.projector],
        # "default" drops the first token (CLS): a tower without one keeps every token ("full")
        vision_feature_select_strategy="full" if model.vision.cfg.use_cls or not cls else "default",
        vision_feature_layer=to_hf_layer(model.vision.cfg.layer, blocks),
        multimodal_projector_bias=True, tie_word_embeddings=bool(getattr(text, "tie_word_embeddings", False)),
        dtype=str(next(model.lm.parameters()).dtype).removeprefix("torch."),
    )


def chat_template(model, image: str = IMAGE_TOKEN) -> str:
    """The processor's template: typed or string content, the default system prompt, then the model's own.
    `image`: the text an image part becomes (see prelude)."""
    if model.cfg.render_mode == "plain":
        return PRELUDE + PLAIN
    if not model.tokenizer.chat_template:
        raise FormatError("the tokenizer has no chat_template: chat mode needs one (llava_lite.data.templates)")
    system = ""
    if model.cfg.system_prompt:
        system = "{%- set SYSTEM_PROMPT = " + _jinja_string(model.cfg.system_prompt) + " -%}" + SYSTEM
    return prelude(image) + system + model.tokenizer.chat_template


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def build_processor(model):
    """LlavaProcessor, or LlavaNextProcessor (tiles at the same pinpoints) for an AnyRes model."""
    from transformers import (
        CLIPImageProcessor,
        LlavaImageProcessor,
        LlavaNextImageProcessor,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    visual, anyres = model.vision.visual, model.vision.anyres
    _, _, cls = tower(model)
    kw = image_processor_kwargs(visual.preprocess_cfg, visual.image_size[0])
    patch = visual.image_size[0] // model.vision.grid_size[0]
    processor = LlavaProcessor if anyres is None else LlavaNextProcessor
    if anyres is not None:  # black padding to the best pinpoint, tiles, the whole image squashed: model/anyres.py
        tile = {"height": anyres.base, "width": anyres.base}  # its tile size is crop_size's, cropping or not
        image_processor = LlavaNextImageProcessor(image_grid_pinpoints=[list(p) for p in anyres.pinpoints],
                                                  **kw | {"crop_size": tile})
    elif model.vision.cfg.pad_to_square:  # pads with int(mean * 255), centred, before resizing: expand_to_square
        image_processor = LlavaImageProcessor(do_pad=True, **kw)
    else:
        image_processor = CLIPImageProcessor(**kw)
    tokenizer = copy.deepcopy(model.tokenizer)
    template = chat_template(model)
    tokenizer.chat_template = template
    return processor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        vision_feature_select_strategy="full" if model.vision.cfg.use_cls or not cls else "default",
        num_additional_image_tokens=int(cls),  # CLIP's CLS token is always in the ViT sequence; SigLIP has none
        chat_template=template, image_token=IMAGE_TOKEN,
    )


def generation_config(model):
    from transformers import GenerationConfig

    tok = model.tokenizer
    return GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=model.stop_token_ids(),
                            pad_token_id=tok.pad_token_id, do_sample=False)


def llava_state(model, config) -> dict[str, torch.Tensor]:
    """Every weight under the names LlavaForConditionalGeneration uses, checked against a meta-device
    instance of it (so a renamed module in another transformers version fails here, not at load)."""
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    anyres = model.vision.anyres is not None
    with torch.device("meta"):
        ref = (LlavaNextForConditionalGeneration if anyres else LlavaForConditionalGeneration)(config)
    names = {id(m): n for n, m in ref.named_modules()}
    base = getattr(ref, "model", ref)
    vision_keys = base.vision_tower.state_dict().keys()
    inner = "vision_model." if any(k.startswith("vision_model.") for k in vision_keys) else ""
    parts = [
        (base.vision_tower, {inner + k: v for k, v in tower_state(model).items()}),
        (base.multi_modal_projector, projector_state(model)),
        (base.language_model, model.lm.get_decoder().state_dict()),
    ]
    if not config.tie_word_embeddings:
        parts.append((ref.get_output_embeddings(), model.lm.get_output_embeddings().state_dict()))
    state = {}
    for module, sd in parts:
        prefix = names[id(module)]
        state |= {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in sd.items()}  # no copy on CPU
    if anyres:  # LLaVA-NeXT's learned row end
        name = next(n for n, p in ref.named_parameters() if p is base.image_newline)
        state[name] = model.projector.image_newline.detach().cpu().contiguous()
    expected = set(ref.state_dict())
    if config.tie_word_embeddings:
        expected -= {names[id(ref.get_output_embeddings())] + ".weight"}
    if set(state) != expected:
        raise RuntimeError(f"weight names do not match LlavaForConditionalGeneration: missing "
                           f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}")
    return state


def write_hf_llava(model, out_dir) -> Path:
    """Write `model` (LoRA already merged) as a llava-hf directory: config.json, generation_config.json,
    model*.safetensors, the processor (image processor, tokenizer, chat template)."""
    from huggingface_hub import save_torch_state_dict

    check_exportable(model)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    config = llava_config(model)
    state = llava_state(model, config)
    processor = build_processor(model)
    out.mkdir(parents=True, exist_ok=True)
    save_torch_state_dict(state, out, max_shard_size="5GB")
    processor.save_pretrained(out)
    generation_config(model).save_pretrained(out)
    config.save_pretrained(out)  # last: a directory with config.json is complete
    if model.cfg.projector == "linear":
        logger.warning(VLLM_LINEAR)
    return out
