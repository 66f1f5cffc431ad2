"""LlavaLite: frozen CLIP tower -> trainable projector -> causal LM.

Image fusion is one masked scatter: each `<image>` placeholder token (expanded to P copies when the
conversation was rendered) is replaced by one projected patch feature. Text-only batches carry no
pixel_values and never touch the vision tower. The loss applies the LM head only at positions that
carry a label, so no logits are computed for image or prompt positions.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from .config import ModelConfig
from .conversation import IMAGE_PLACEHOLDER
from .projector import build_projector
from .render import IGNORE
from .vision import VisionTower

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LlavaOutput:
    loss: torch.Tensor | None = None  # mean CE over supervised tokens of this batch
    loss_sum: torch.Tensor | None = None  # summed CE, for token-weighted accumulation
    num_tokens: torch.Tensor | None = None  # supervised tokens in this batch
    logits: torch.Tensor | None = None  # only when no labels are given: [B, T, V]


def pick_attention(requested: str, dtype: torch.dtype) -> str:
    """flash_attention_2 when asked for (or 'auto') and usable; SDPA otherwise."""
    if requested not in ("auto", "flash_attention_2"):
        return requested
    usable = torch.cuda.is_available() and dtype in (torch.bfloat16, torch.float16)
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        usable = False
    if requested == "flash_attention_2" and not usable:
        raise RuntimeError("attn_implementation=flash_attention_2 needs a CUDA GPU, bf16/fp16 and `pip install llava-lite[flash]`")
    return "flash_attention_2" if usable else "sdpa"


def load_tokenizer(path: str):
    tok = AutoTokenizer.from_pretrained(path)
    if IMAGE_PLACEHOLDER not in tok.get_vocab():
        tok.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # padded positions are masked out and never supervised
    return tok


def load_lm(path: str, cfg: ModelConfig, vocab_size: int, quantize: str | None = None) -> nn.Module:
    dtype = DTYPES[cfg.dtype]
    kwargs = dict(dtype=dtype, attn_implementation=pick_attention(cfg.attn_implementation, dtype))
    if quantize:
        kwargs["quantization_config"] = _bnb_config(quantize, dtype)
    lm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    _resize_embeddings(lm, vocab_size)
    return lm


def _bnb_config(bits: str, dtype: torch.dtype):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise RuntimeError("QLoRA needs bitsandbytes and a CUDA GPU: pip install llava-lite[qlora]") from e
    if not torch.cuda.is_available():
        raise RuntimeError("QLoRA (lora.quantize) needs a CUDA GPU; run LoRA without quantize on CPU")
    from transformers import BitsAndBytesConfig

    if bits == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )


@torch.no_grad()
def _resize_embeddings(lm: nn.Module, vocab_size: int) -> None:
    """Grow the vocabulary for new special tokens; new rows = mean of old rows (deterministic, so
    reloading a LoRA adapter over the base model rebuilds exactly the same rows)."""
    old = lm.get_input_embeddings().weight.shape[0]
    if vocab_size <= old:
        return
    lm.resize_token_embeddings(vocab_size, mean_resizing=False)
    for emb in {id(m): m for m in (lm.get_input_embeddings(), lm.get_output_embeddings()) if m is not None}.values():
        emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)


class LlavaLite(nn.Module):
    def __init__(self, vision: VisionTower, projector: nn.Module, lm: nn.Module, tokenizer, cfg: ModelConfig):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.lm = lm
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
        self.render_mode = "chat"  # how prompts are built: "chat" (template) or "plain" (stage-1 captions)
        self.system_prompt: str | None = None
        self.lm_weights: str | None = None  # how the loaded directory stored the LM (see pretrained.py)

    def save_pretrained(self, out_dir) -> "Path":
        from .pretrained import save_pretrained

        return save_pretrained(self, out_dir)

    @classmethod
    def from_pretrained(cls, model_dir, **kwargs) -> "LlavaLite":
        from .pretrained import from_pretrained

        return from_pretrained(model_dir, **kwargs)

    @classmethod
    def build(cls, cfg: ModelConfig, quantize: str | None = None) -> "LlavaLite":
        """A fresh model from an open_clip tower and an LM checkpoint (the projector is random)."""
        tokenizer = load_tokenizer(cfg.lm)
        lm = load_lm(cfg.lm, cfg, len(tokenizer), quantize)
        vision = VisionTower(cfg.vision).to(DTYPES[cfg.dtype])
        projector = build_projector(cfg.projector, vision.width, lm.config.hidden_size)
        return cls(vision, projector, lm, tokenizer, cfg)

    @property
    def image_seq_len(self) -> int:
        return self.vision.num_patches

    @property
    def device(self) -> torch.device:
        return self.projector_device()

    def projector_device(self) -> torch.device:
        return next(self.projector.parameters()).device

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, P, hidden]"""
        feats = self.vision(pixel_values)
        proj_dtype = next(self.projector.parameters()).dtype
        return self.projector(feats.to(proj_dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T] ids (+ [N, 3, H, W] images) -> [B, T, hidden] embeddings with image features in place."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        slots = input_ids == self.image_token_id  # [B, T]
        n_slots = int(slots.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if n_slots:
                raise ValueError(f"batch has {n_slots} image placeholder tokens but no pixel_values")
            return embeds
        feats = self.encode_images(pixel_values)  # [N, P, hidden]
        if n_slots != feats.shape[0] * feats.shape[1]:
            raise ValueError(
                f"{feats.shape[0]} image(s) x {feats.shape[1]} features do not fill {n_slots} placeholder tokens"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, T]
        attention_mask: torch.Tensor | None = None,  # [B, T]
        pixel_values: torch.Tensor | None = None,  # [N, 3, H, W], N = images in the batch
        labels: torch.Tensor | None = None,  # [B, T], IGNORE where not supervised
    ) -> LlavaOutput:
        embeds = self.embed(input_ids, pixel_values)
        hidden = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state  # [B, T, hidden]
        head = self.lm.get_output_embeddings()
        if labels is None:
            return LlavaOutput(logits=head(hidden))
        targets = labels[:, 1:]  # position t predicts token t+1
        keep = targets != IGNORE
        logits = head(hidden[:, :-1][keep]).float()  # [S, V] for the S supervised positions only
        loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        n = keep.sum()
        return LlavaOutput(loss=loss_sum / n.clamp(min=1), loss_sum=loss_sum, num_tokens=n)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,  # [1, T] a rendered prompt
        pixel_values: torch.Tensor | None = None,  # [N, 3, H, W]
        max_new_tokens: int = 256,
        temperature: float = 0.0,  # 0 = greedy
        top_p: float = 1.0,
        stop_token_ids: list[int] | None = None,
        on_token=None,  # callback(token_id) for streaming; return True to stop early
        generator: torch.Generator | None = None,
    ) -> list[int]:
        """Decode one continuation with a KV cache; returns the new token ids (stop token excluded)."""
        stop = set(stop_token_ids if stop_token_ids is not None else self.stop_token_ids())
        embeds = self.embed(input_ids, pixel_values)
        out = self.lm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        new: list[int] = []
        for _ in range(max_new_tokens):
            token = sample_token(out.logits[0, -1].float(), temperature, top_p, generator)
            if token in stop:
                break
            new.append(token)
            if on_token is not None and on_token(token):
                break
            nxt = torch.tensor([[token]], device=input_ids.device)
            out = self.lm(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
        return new

    @torch.no_grad()
    def generate_greedy(
        self,
        prompts: list[list[int]],  # B rendered prompts, any lengths
        pixel_values: torch.Tensor | None = None,  # [N, 3, H, W], the prompts' images in order
        max_new_tokens: int = 16,
    ) -> list[list[int]]:
        """Greedy decoding of B prompts at once: left-padded, one KV cache. Gives the same tokens as
        `generate(..., temperature=0)` on each prompt alone, in a fraction of the time (evaluation)."""
        stop = torch.tensor(self.stop_token_ids(), device=self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else int(stop.min())
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.lm(inputs_embeds=self.embed(ids, pixel_values), attention_mask=mask, position_ids=positions,
                      use_cache=True, logits_to_keep=1)
        new: list[list[int]] = [[] for _ in prompts]
        done = torch.zeros(len(prompts), dtype=torch.bool, device=self.device)
        for _ in range(max_new_tokens):
            token = out.logits[:, -1].argmax(-1)  # [B]
            done |= torch.isin(token, stop)
            for row in (~done).nonzero().flatten().tolist():
                new[row].append(int(token[row]))
            if bool(done.all()):
                break
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            positions = positions[:, -1:] + 1
            out = self.lm(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                          past_key_values=out.past_key_values, use_cache=True)
        return new

    def stop_token_ids(self) -> list[int]:
        from .render import end_of_turn_token

        ids = {self.tokenizer.eos_token_id}
        eot = end_of_turn_token(self.tokenizer) if self.tokenizer.chat_template else None
        if eot is not None:
            ids.add(self.tokenizer.convert_tokens_to_ids(eot))
        return sorted(i for i in ids if i is not None)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> int:
    """[V] logits -> token id: greedy when temperature == 0, else nucleus sampling."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set whose mass reaches top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs, 1, generator=generator))
