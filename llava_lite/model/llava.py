"""LlavaLite: frozen CLIP tower -> trainable projector -> causal LM, and its model directory.

Image fusion is one masked scatter (fusion.py): each `<image>` placeholder token (expanded to the
image's token count when the conversation was rendered) is replaced by one projected feature.
Text-only batches carry no pixel_values and never touch the vision tower. The loss applies the LM
head only at positions that carry a label, so no logits are computed for image or prompt positions.

A model directory (`save_pretrained` / `from_pretrained`):

    dir/llava_lite.json          resolved model config (with its render_mode and system_prompt) + how the LM is stored
    dir/projector.safetensors
    dir/tokenizer/               tokenizer with the <image> token (and its chat template)
    dir/lm/                      full LM weights (when the LM was trained), or
    dir/lm_adapter/              a peft LoRA adapter over the base LM named in the config, or nothing
                                 (LM untouched, e.g. after stage 1: the base LM is referenced)
    dir/vision/                  open_clip local-dir copy, unless the tower is a hub name + tag

A model is staged in a temporary directory and moved into place with its config file last, so a
crash never leaves a half-written directory that looks loadable. The directory may also hold a
training run's checkpoints/ and logs, which saving leaves alone.

Every LlavaLite is made in one order: tokenizer -> LM -> tower -> projector. `build_from_config`
loads the tokenizer and LM (LlavaLite.build: from cfg.lm; from_pretrained: from the directory, then
its LoRA adapter), `assemble` adds the tower and projector (also used by model/random.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from llava_lite.config import ModelConfig, from_dict
from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.render import end_of_turn_token
from llava_lite.model.fusion import fill_slots, image_features
from llava_lite.model.lm import DTYPES, is_peft, load_lm, load_tokenizer
from llava_lite.model.packed_attention import decoder_kwargs
from llava_lite.model.projector import AnyresProjector, build_projector
from llava_lite.model.vision import VisionTower

CONFIG_NAME = "llava_lite.json"


@dataclass
class LlavaOutput:
    loss: torch.Tensor | None = None  # mean CE over supervised tokens of this batch
    loss_sum: torch.Tensor | None = None  # summed CE, for token-weighted accumulation
    num_tokens: torch.Tensor | None = None  # supervised tokens in this batch
    token_nll: torch.Tensor | None = None  # [S] CE of each supervised token, in row-major order (preference.py)
    logits: torch.Tensor | None = None  # only when no labels are given: [B, T, V]


class LlavaLite(nn.Module):
    def __init__(self, vision: VisionTower, projector: nn.Module, lm: nn.Module, tokenizer, cfg: ModelConfig):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        self.lm_weights: str | None = None  # how the loaded directory stored the LM (see from_pretrained)

    @classmethod
    def build(cls, cfg: ModelConfig, quantize: str | None = None) -> LlavaLite:
        """A fresh model from an open_clip tower and an LM checkpoint (the projector is random)."""
        return build_from_config(cfg, cfg.lm, quantize=quantize)

    @property
    def image_seq_len(self) -> int:
        """Image tokens per image; with AnyRes the most an image can take (each takes `image_tokens(size)`)."""
        anyres = self.vision.anyres
        return self.vision.num_patches if anyres is None else anyres.max_tokens()

    def image_tokens(self, size: tuple[int, int]) -> int:
        """Image tokens for an image of `size` (height, width): the fixed count, or AnyRes's for that size."""
        anyres = self.vision.anyres
        return self.vision.num_patches if anyres is None else anyres.num_tokens(size)

    @property
    def device(self) -> torch.device:
        return self.projector_device()

    def projector_device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def encode_images(self, pixel_values: torch.Tensor, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """[N, 3, H, W] -> [S, hidden]: every image's tokens, one image after another (model/fusion.py)."""
        return image_features(self.vision, self.projector, pixel_values, image_sizes)

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
              image_rows: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] ids (+ [N, 3, H, W] images; AnyRes: their tiles and [M, 2] image_sizes) -> [B, T, hidden]
        embeddings with image features in place. image_rows: see fusion.image_features."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        if pixel_values is None or pixel_values.shape[0] == 0:
            n_slots = int((input_ids == self.image_token_id).sum())
            if n_slots:
                raise ValueError(f"batch has {n_slots} image placeholder tokens but no pixel_values")
            if pixel_values is None:
                return embeds
            # zero images (distributed.run_vision_every_step): tower and projector run where images would, no compute
            return embeds + self.encode_images(pixel_values, image_sizes).sum().to(embeds.dtype) * 0
        feats = image_features(self.vision, self.projector, pixel_values, image_sizes, image_rows)
        return fill_slots(embeds, input_ids, self.image_token_id, feats)

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor | None = None,  # [B, T]
        pixel_values: torch.Tensor | None = None,  # [N, 3, H, W], N = images in the batch
        labels: torch.Tensor | None = None,  # [B, T], IGNORE_INDEX where not supervised
        position_ids: torch.Tensor | None = None,  # [B, T], packed rows only: restart at 0 for each sample
        segment_ids: torch.Tensor | None = None,  # [B, T], isolated turns only (data/isolate.py)
        image_rows: torch.Tensor | None = None,  # [M], which image fills each image slot group (see embed)
        image_sizes: torch.Tensor | None = None,  # [N, 2] (height, width) of each image, AnyRes only
    ) -> LlavaOutput:
        """Padded rows (attention_mask), packed rows (position_ids) or isolated turns (segment_ids);
        packed_attention.py `decoder_kwargs` turns them into the LM's layout, attention never
        crossing samples (packed) and each turn seeing the shared prefix and itself (isolated)."""
        embeds = self.embed(input_ids, pixel_values, image_rows, image_sizes)
        layout = decoder_kwargs(self.lm, attention_mask, position_ids, segment_ids, embeds.dtype)
        hidden = self.lm.get_decoder()(inputs_embeds=embeds, use_cache=False, **layout)
        hidden = hidden.last_hidden_state  # [B, T, hidden]
        head = self.lm.get_output_embeddings()
        if labels is None:
            return LlavaOutput(logits=head(hidden))
        targets = labels[:, 1:]  # position t predicts token t+1
        keep = targets != IGNORE_INDEX
        logits = head(hidden[:, :-1][keep]).float()  # [S, V] for the S supervised positions only
        token_nll = F.cross_entropy(logits, targets[keep], reduction="none")
        loss_sum, n = token_nll.sum(), keep.sum()
        return LlavaOutput(loss=loss_sum / n.clamp(min=1), loss_sum=loss_sum, num_tokens=n, token_nll=token_nll)

    def stop_token_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id}
        eot = end_of_turn_token(self.tokenizer) if self.tokenizer.chat_template else None
        if eot is not None:
            ids.add(self.tokenizer.convert_tokens_to_ids(eot))
        return sorted(i for i in ids if i is not None)

    def save_pretrained(self, out_dir: str | Path, state_dict: dict | None = None, lm_dtype: str | None = None) -> Path:
        return save_pretrained(self, out_dir, state_dict, lm_dtype)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, **kwargs) -> LlavaLite:
        return from_pretrained(model_dir, **kwargs)


def _publish(staged: Path, out_dir: Path) -> None:
    """Move a staged model into `out_dir`, which may also hold checkpoints and logs. The config file
    is removed first and written last: a directory is a loadable model only once it is complete."""
    (out_dir / CONFIG_NAME).unlink(missing_ok=True)
    for entry in staged.iterdir():
        if entry.name == CONFIG_NAME:
            continue
        target = out_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(entry, target)
    os.replace(staged / CONFIG_NAME, out_dir / CONFIG_NAME)


def save_pretrained(model: LlavaLite, out_dir: str | Path, state_dict: dict | None = None,
                    lm_dtype: str | None = None) -> Path:
    """`state_dict`: the whole model's weights, gathered on the main process when training was
    sharded (default: the model's own). The LM is written in `lm_dtype` (the training dtype, so fp32
    master weights do not double a bf16 LM; default: as it is), the projector in fp32."""
    out_dir = Path(out_dir)
    sd = model.state_dict() if state_dict is None else state_dict

    def part(name: str) -> dict:
        return {k[len(name) + 1:]: v.detach().cpu().contiguous() for k, v in sd.items() if k.startswith(name + ".")}

    cast = DTYPES.get(lm_dtype) if lm_dtype else None
    cfg = dataclasses.asdict(model.cfg)
    if Path(cfg["lm"]).exists():  # a local base LM is referenced by absolute path, so the directory can move
        cfg["lm"] = str(Path(cfg["lm"]).resolve())
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".save-", dir=out_dir) as staging:
        tmp = Path(staging)
        if model.vision.needs_weights_saved():
            model.vision.save_local(tmp / "vision", state=part("vision"))
            cfg["vision"].update(model="hf:vision" if model.vision.is_hf else "local-dir:vision", pretrained=None)
        save_file({k: v.float() for k, v in part("projector").items()}, str(tmp / "projector.safetensors"))
        model.tokenizer.save_pretrained(tmp / "tokenizer")
        if is_peft(model.lm):
            # The resized embedding rows are rebuilt deterministically on load (model/lm.py resize_embeddings),
            # so the adapter need not carry a copy of the whole embedding matrix.
            model.lm.save_pretrained(tmp / "lm_adapter", state_dict=part("lm"), save_embedding_layers=False)
            lm_weights = "lora"
        elif any(p.requires_grad for p in model.lm.parameters()) or model.lm_weights == "full":
            lm_state = {k: v.to(cast) if cast is not None and v.is_floating_point() else v
                        for k, v in part("lm").items()}
            model.lm.save_pretrained(tmp / "lm", state_dict=lm_state)
            cfg["lm"], lm_weights = "lm", "full"
        else:
            lm_weights = "reference"
        meta = {"model": cfg, "lm_weights": lm_weights, "image_seq_len": model.image_seq_len}
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        _publish(tmp, out_dir)
    return out_dir


def _resolve(ref: str, base: Path) -> str:
    """Paths saved relative to a model directory ("lm", "local-dir:vision", "hf:vision") become absolute."""
    if ref.startswith("local-dir:"):
        path = Path(ref[len("local-dir:"):])
        return f"local-dir:{path if path.is_absolute() else base / path}"
    if ref.startswith("hf:") and (base / ref[len("hf:"):]).exists():  # else a hub id, kept as it is
        return f"hf:{base / ref[len('hf:'):]}"
    return str(base / ref) if (base / ref).exists() and not Path(ref).is_absolute() else ref


def read_meta(model_dir: str | Path) -> dict:
    path = Path(model_dir) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} is not a llava-lite model directory: {CONFIG_NAME} is missing")
    return json.loads(path.read_text())


def saved_config(meta: dict) -> dict:
    """The model config in a directory's `read_meta`, as a dict; directories written before render_mode
    and system_prompt joined the config keep them beside it ("mode", "system_prompt")."""
    older = {"render_mode": meta.get("mode", "chat"), "system_prompt": meta.get("system_prompt")}
    return older | meta["model"]


def assemble(cfg: ModelConfig, tokenizer, lm: nn.Module, meta: bool = False) -> LlavaLite:
    """A LlavaLite around a tokenizer and an LM: the tower (cfg.vision, in cfg.dtype), then the projector
    (fp32, random), both on the CPU (meta=True: on the meta device, shapes only)."""
    vision = VisionTower(cfg.vision, device="meta" if meta else "cpu").to(DTYPES[cfg.dtype])
    with torch.device("meta") if meta else contextlib.nullcontext():
        projector = build_projector(cfg.projector, vision.width, lm.config.hidden_size)
        if vision.anyres is not None:
            projector = AnyresProjector(projector, lm.config.hidden_size, vision.anyres)
    return LlavaLite(vision, projector, lm, tokenizer, cfg)


def build_from_config(cfg: ModelConfig, tokenizer_ref: str, quantize: str | None = None,
                      device: str | torch.device | None = None, adapter: Path | None = None,
                      trainable_lora: bool = False) -> LlavaLite:
    """Tokenizer (from `tokenizer_ref`) -> LM (cfg.lm, grown to the tokenizer; then the peft `adapter`,
    if any) -> tower -> projector (random: from_pretrained loads its weights next)."""
    tokenizer = load_tokenizer(tokenizer_ref)
    lm = load_lm(cfg.lm, cfg, len(tokenizer), quantize, device=device)
    if adapter is not None:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter, is_trainable=trainable_lora)
    return assemble(cfg, tokenizer, lm)


def from_pretrained(
    model_dir: str | Path,
    dtype: str | None = None,
    attn_implementation: str | None = None,
    trainable_lora: bool = False,
    quantize: str | None = None,
    device: str | torch.device | None = None,
) -> LlavaLite:
    """Build from the directory's saved config, then load its weights: in `dtype` (default: the saved
    one), on `device`. With device=None it stays on the CPU for a trainer to place (attention is then
    picked for CUDA when one is present). The projector stays in fp32 (trained and saved that way).
    Chat, eval and serve call `from_pretrained(dir, device=..., dtype=...)`; see `default_device()`."""
    model_dir = Path(model_dir).resolve()
    meta = read_meta(model_dir)
    lm_weights = meta["lm_weights"]
    cfg: ModelConfig = from_dict(ModelConfig, saved_config(meta))
    cfg.vision.model = _resolve(cfg.vision.model, model_dir)
    cfg.lm = _resolve(cfg.lm, model_dir)
    cfg.init_from = None
    cfg.dtype = dtype or cfg.dtype
    cfg.attn_implementation = attn_implementation or cfg.attn_implementation
    adapter = model_dir / "lm_adapter" if lm_weights == "lora" else None
    model = build_from_config(cfg, str(model_dir / "tokenizer"), quantize, device, adapter, trainable_lora)
    model.projector.load_state_dict(load_file(str(model_dir / "projector.safetensors")))
    model.projector.float()
    model.lm_weights = lm_weights
    model.eval()
    if device is not None and not quantize:  # a quantized LM is placed by bitsandbytes
        model.to(device)
    return model


def default_device() -> str:
    """cuda when available, else cpu: the default of chat, eval and serve's --device."""
    return "cuda" if torch.cuda.is_available() else "cpu"

