"""Length-grouped batches that never mix image and text-only samples (LLaVA's group_by_modality_length).

Keeping a modality per batch means a batch never carries vision tower work for only a few of its
samples; grouping similar lengths keeps padding small.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

# As in transformers' LengthGroupedSampler: lengths are sorted within windows of 50 batches, so
# batches are similar in length but the order stays random.
MEGABATCH_MULT = 50


class ModalityLengthBatchSampler(Sampler[list[int]]):
    """Yield batches (lists of dataset indices), each all-image or all-text-only.

    With shuffle: per modality, shuffle, sort each mega-batch of batch_size * 50 by length (longest
    first), cut into batches, then shuffle all batches together so modalities interleave. Seeded by
    seed + epoch (see set_epoch). Without shuffle: dataset order within each modality, batches in
    the order of their first index.
    """

    def __init__(
        self,
        lengths: list[int],
        has_image: list[bool],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
    ) -> None:
        if len(lengths) != len(has_image):
            raise ValueError(f"lengths has {len(lengths)} entries but has_image has {len(has_image)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        image = [i for i, flag in enumerate(has_image) if flag]
        text = [i for i, flag in enumerate(has_image) if not flag]
        self.groups = [g for g in (image, text) if g]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _split(self, indices: list[int]) -> list[list[int]]:
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, in order."""
        if not self.shuffle:
            batches = [b for group in self.groups for b in self._split(group)]
            return sorted(batches, key=lambda b: b[0])
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        mega = self.batch_size * MEGABATCH_MULT
        batches = []
        for group in self.groups:
            order = [group[i] for i in torch.randperm(len(group), generator=gen).tolist()]
            for start in range(0, len(order), mega):
                window = sorted(order[start : start + mega], key=lambda i: self.lengths[i], reverse=True)
                order[start : start + mega] = window
            batches.extend(self._split(order))
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        if self.drop_last:
            return sum(len(g) // self.batch_size for g in self.groups)
        return sum(-(-len(g) // self.batch_size) for g in self.groups)
