"""Attention for packed rows without FlashAttention: each sample attends causally to itself only,
computed sample by sample, so a row of n samples costs what the samples cost alone.

SDPA with a block-diagonal mask over the whole row (what transformers builds from restarting
position_ids) computes every [T, T] score of the row and masks most of them: for 16 samples of
~120 tokens in a 2k row that is ~16x the attention work, and on a CPU it made packing slower than
padding. On CUDA, flash_attention_2 does the same varlen split itself (from position_ids).

`use_packed_sdpa(lm)` switches an SDPA LM to this function once (registered with transformers'
AttentionInterface). Calls without `cu_seq_lens_q` (every unpacked forward, generation) go to
transformers' own SDPA function unchanged, with the same mask: results are bit-identical.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NAME = "llava_lite_packed_sdpa"


def sample_bounds(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] positions restarting at 0 per sample -> [S + 1] offsets of the S segments in the
    flattened B * T positions (every row starts a segment; a row's tail padding is one too)."""
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    return torch.cat([starts, starts.new_tensor([flat.numel()])])


def packed_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """query [B, H, T, d], key / value [B, Hkv, T, d] -> [B, T, H, d], as transformers' SDPA returns."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, h, t, d = query.shape
    groups = h // key.shape[1]
    if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads (transformers' repeat_kv)
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    q, k, v = (x.transpose(0, 1).reshape(h, b * t, x.shape[-1]) for x in (query, key, value))  # rows end to end
    p = dropout if module.training else 0.0
    sizes = bounds.diff().tolist()  # split, not slices: its backward is one cat, not a zero-filled copy per slice
    out = torch.cat([F.scaled_dot_product_attention(qs, ks, vs, dropout_p=p, is_causal=True, scale=scaling)
                     for qs, ks, vs in zip(q.split(sizes, 1), k.split(sizes, 1), v.split(sizes, 1))],
                    dim=1)  # [H, B*T, d]
    return out.reshape(h, b, t, -1).permute(1, 2, 0, 3).contiguous(), None


def use_packed_sdpa(lm) -> bool:
    """Switch an SDPA LM to `packed_sdpa` (idempotent); False when the LM uses another kernel
    (flash_attention_2 splits packed rows itself; eager keeps the block-diagonal mask)."""
    config = lm.config
    if config._attn_implementation == NAME:
        return True
    if config._attn_implementation != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # unpacked calls get SDPA's own mask
    config._attn_implementation = NAME
    return True
