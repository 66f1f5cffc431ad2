"""The one decoding loop, for chat, serve and evaluation.

    new = generate(model, [prompt_ids, ...], pixel_values, max_new_tokens=64)

B prompts of any lengths are left-padded into one batch and decoded together with one KV cache:
greedy (temperature 0) or nucleus sampling, per-row stop ids, and an optional per-row callback
`on_token(row, token) -> bool` that streams tokens and may end its row early. A row's result is
the same as decoding that prompt alone (tested): padding is masked and position ids restart
after it.
"""
from __future__ import annotations

from collections.abc import Callable

import torch


@torch.no_grad()
def generate(
    model,  # a LlavaLite
    prompts: list[list[int]],  # B rendered prompts, any lengths
    pixel_values: torch.Tensor | None = None,  # [N, 3, H, W], the prompts' images in order
    *,
    image_sizes: torch.Tensor | None = None,  # [images, 2]: AnyRes, where pixel_values holds each image's tiles
    max_new_tokens: int = 256,
    temperature: float = 0.0,  # 0 = greedy
    top_p: float = 1.0,
    stop_token_ids: list[int] | None = None,  # default: the model's eos and end-of-turn tokens
    on_token: Callable[[int, int], bool] | None = None,  # (row, token) -> True ends that row
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """New token ids per prompt (stop token excluded)."""
    device = model.device
    stop = torch.tensor(stop_token_ids if stop_token_ids is not None else model.stop_token_ids(), device=device)
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else int(stop.min())
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    embeds = model.embed(ids, pixel_values, image_sizes=image_sizes)
    out = model.lm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    new: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for _ in range(max_new_tokens):
        token = next_tokens(out.logits[:, -1].float(), temperature, top_p, generator)  # [B]
        done |= torch.isin(token, stop)
        for row in (~done).nonzero().flatten().tolist():
            new[row].append(int(token[row]))
            if on_token is not None and on_token(row, int(token[row])):
                done[row] = True
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        out = model.lm(input_ids=token[:, None], attention_mask=mask, position_ids=positions,
                       past_key_values=out.past_key_values, use_cache=True)
    return new


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float, generator=None) -> torch.Tensor:
    """[B, V] logits -> [B] token ids: greedy when temperature == 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set whose mass reaches top_p
        sorted_p[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
