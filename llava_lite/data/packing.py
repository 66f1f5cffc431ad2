"""Padding-free packing: a batch's samples share rows of up to `data.max_length` tokens.

    collate = PackingCollator(pad_token_id, max_length=2048)
    batch = collate(samples)  # input_ids / labels / position_ids / attention_mask [R, W], pixel_values

Samples are placed first-fit, longest first, which gives the fewest rows R; then they are spread
evenly over those R rows (`balance`), so little padding is left (only at each row's end). The
batch's samples come from the sampler, which keeps one modality per batch, so a row never mixes
image and text-only samples either.

What keeps a packed row equal to its samples run one by one:
- `position_ids` restart at 0 for every sample; the model passes them to the LM without an
  attention mask and attention never crosses samples: SDPA runs sample by sample
  (packed_attention.py), flash_attention_2 runs varlen from the positions, eager gets
  transformers' block-diagonal causal mask.
- The first label of every sample is IGNORE_INDEX: in a row, the last token of one sample would
  otherwise "predict" the first token of the next.
- Images are concatenated in row order, which is the order `masked_scatter` fills placeholders.
- The tail padding of a row forms its own segment (positions restart) and carries no label.
The loss stays the token-weighted mean: the model sums CE over supervised tokens.
"""
from __future__ import annotations

import torch

from llava_lite.constants import IGNORE_INDEX
from llava_lite.data.dataset import Sample, Skipped


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row: longest first, each into the first row with room (first-fit decreasing).
    A sample longer than `capacity` gets a row of its own (rendering already truncates to max_length)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(capacity - lengths[i])
    return rows


def balance(lengths: list[int], capacity: int) -> list[list[int]]:
    """As few rows as first-fit needs, with the samples spread so the rows are as even as possible
    (longest first, each into the shortest row that has room): a batch's rows are padded to its
    longest row, so one full row and one nearly empty one would waste most of the second."""
    rows = first_fit(lengths, capacity)
    even: list[list[int]] = [[] for _ in rows]
    fill = [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min((r for r in range(len(rows)) if fill[r] + lengths[i] <= capacity), key=lambda r: fill[r], default=None)
        if r is None:  # the even spread does not fit: keep first-fit's rows
            return rows
        even[r].append(i)
        fill[r] += lengths[i]
    return even if max(fill) <= max(sum(lengths[i] for i in row) for row in rows) else rows


def padding_fraction(attention_mask: torch.Tensor) -> float:
    """Share of the batch's positions that are padding (computed but carry no token)."""
    return 1.0 - float(attention_mask.sum()) / max(attention_mask.numel(), 1)


class PackingCollator:
    """Pack a batch of samples into rows (see the module docstring); same keys as `Collator`, plus
    position_ids. attention_mask marks real tokens (for counting); the model does not use it."""

    def __init__(self, pad_token_id: int, max_length: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.max_length = max_length
        self.multiple = pad_to_multiple_of

    def __call__(self, samples: list[Sample]) -> dict:
        kept = [s for s in samples if not s.skipped] or samples[:1]  # never an empty batch (DDP needs a forward)
        if any(s.segment_ids is not None for s in kept):
            raise ValueError("packing cannot hold isolated turns (data.sources[*].isolate_turns); pad instead")
        rows = balance([len(s.input_ids) for s in kept], self.max_length)
        width = max(sum(len(kept[i].input_ids) for i in row) for row in rows)
        width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        pixels, sizes = [], []
        for r, row in enumerate(rows):
            start = 0
            for i in row:
                s = kept[i]
                n = len(s.input_ids)
                ids[r, start:start + n], labels[r, start:start + n] = s.input_ids, s.labels
                labels[r, start] = IGNORE_INDEX  # never a target across the boundary with the previous sample
                mask[r, start:start + n] = 1
                positions[r, start:start + n] = torch.arange(n)
                if s.pixel_values is not None:
                    pixels.append(s.pixel_values)
                if s.image_sizes is not None:
                    sizes.append(s.image_sizes)
                start += n
            positions[r, start:] = torch.arange(width - start)  # tail padding: a segment of its own
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            "labels": labels,
            "pixel_values": torch.cat(pixels) if pixels else None,
            "num_skipped": Skipped.of(samples),
        }
        if sizes:  # AnyRes (data/dataset.py Collator)
            batch["image_sizes"] = torch.cat(sizes)
        return batch
