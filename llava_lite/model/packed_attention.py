"""How a batch's layout reaches the LM's attention (`decoder_kwargs`): padded rows, packed rows, isolated turns.

Packed rows without FlashAttention: each sample attends causally to itself only,
computed sample by sample, so a row of n samples costs what the samples cost alone.

SDPA with a block-diagonal mask over the whole row (what transformers builds from restarting
position_ids) computes every [T, T] score of the row and masks most of them: for 16 samples of
~120 tokens in a 2k row that is ~16x the attention work, and on a CPU it made packing slower than
padding. On CUDA, flash_attention_2 does the same varlen split itself (from position_ids).

`use_packed_sdpa(lm)` switches an SDPA LM to this function once (registered with transformers'
AttentionInterface). Calls without `cu_seq_lens_q` (every unpacked forward, generation) go to
transformers' own SDPA function unchanged, with the same mask: results are bit-identical.

Isolated turns (data/isolate.py) get a [B, 1, T, T] mask in which each turn sees the shared
prefix and itself, and positions that continue from the prefix (`segment_attention`).
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


# ---- isolated turns (data/isolate.py) --------------------------------------------------------------
def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] segments (0 = shared prefix, k = turn k, -1 = padding) -> positions: the prefix counts
    from 0, every turn continues from the prefix's end as if it were the only one."""
    seg = segment_ids.clamp(min=0)
    onehot = F.one_hot(seg, int(seg.max()) + 1)  # [B, T, K]
    within = (onehot.cumsum(1) * onehot).sum(-1) - 1  # index of each token inside its own segment
    prefix = (segment_ids == 0).sum(1, keepdim=True)
    return torch.where(segment_ids == 0, within, prefix + within)


def segment_attention(lm, segment_ids: torch.Tensor, dtype: torch.dtype) -> dict:
    """The decoder's `attention_mask` and `position_ids` for isolated turns: causal, and a turn sees
    the shared prefix and itself only. A [B, 1, T, T] mask as the LM's kernel takes it: boolean for
    SDPA, additive for eager; FlashAttention cannot hold it."""
    impl = lm.config._attn_implementation
    if impl not in ("sdpa", "eager", NAME):
        raise ValueError(f"isolated turns (data.sources[*].isolate_turns) need model.attn_implementation sdpa or "
                         f"eager, not {impl!r}")
    t = segment_ids.shape[1]
    idx = torch.arange(t, device=segment_ids.device)
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    allowed = (idx[:, None] >= idx[None, :]) & (k >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(t, dtype=torch.bool, device=segment_ids.device)  # padding rows see themselves: no NaN
    mask = allowed[:, None]
    if impl == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return {"attention_mask": mask, "position_ids": segment_positions(segment_ids)}


def decoder_kwargs(lm, attention_mask=None, position_ids=None, segment_ids=None, dtype=torch.float32) -> dict:
    """How a batch's layout reaches the decoder: padded rows (attention_mask), packed rows
    (position_ids restarting per sample, no mask; SDPA runs sample by sample), or isolated turns."""
    if segment_ids is not None:
        return segment_attention(lm, segment_ids, dtype)
    if position_ids is None:
        return {"attention_mask": attention_mask}
    if use_packed_sdpa(lm):  # the all-ones mask only lets transformers skip building a [T, T] mask nothing reads
        return {"position_ids": position_ids, "cu_seq_lens_q": sample_bounds(position_ids),
                "attention_mask": torch.ones_like(position_ids)}
    return {"position_ids": position_ids}  # flash_attention_2: varlen from the positions; eager: block-diagonal
