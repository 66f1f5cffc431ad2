"""Length-grouped batches that never mix image and text-only samples (LLaVA's group_by_modality_length).

Keeping a modality per batch means a batch never carries vision tower work for only a few of its
samples; grouping similar lengths keeps padding small.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import Sampler

from llava_lite.config import ConfigError

# As in transformers' LengthGroupedSampler: lengths are sorted within windows of 50 batches, so
# batches are similar in length but the order stays random.
MEGABATCH_MULT = 50


class ModalityLengthBatchSampler(Sampler[list[int]]):
    """Yield batches (lists of dataset indices), each all-image or all-text-only.

    The records of an epoch are `epoch_indices(epoch)` (default: every index once); a data
    mixture passes its per-epoch draw here, which may repeat or leave out indices.

    With shuffle: per modality, shuffle, sort each mega-batch of batch_size * 50 by length (longest
    first), cut into batches, then shuffle all batches together so modalities interleave. Seeded by
    seed + epoch (see set_epoch). Without shuffle: the epoch's order within each modality, batches
    in the order of their first record (a curriculum's easy-to-hard order is kept this way).
    """

    def __init__(
        self,
        lengths: list[int],
        has_image: list[bool],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        epoch_indices: Callable[[int], list[int]] | None = None,
    ) -> None:
        if len(lengths) != len(has_image):
            raise ValueError(f"lengths has {len(lengths)} entries but has_image has {len(has_image)}")
        if batch_size < 1:
            raise ConfigError(f"train.batch_size must be >= 1, got {batch_size}; set a positive micro-batch size")
        self.lengths = list(lengths)
        self.has_image = list(has_image)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.epoch_indices = epoch_indices
        self._cache: tuple[int, list[int]] | None = None  # (epoch, its indices)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self) -> list[int]:
        """The current epoch's records (dataset indices), in the mixture's order."""
        if self._cache is None or self._cache[0] != self.epoch:
            every = self.epoch_indices is None
            indices = list(range(len(self.lengths))) if every else list(self.epoch_indices(self.epoch))
            self._cache = (self.epoch, indices)
        return self._cache[1]

    def _groups(self, items: list[int], modality: list[bool]) -> list[list[int]]:
        """`items` split by modality (image first), order kept."""
        image = [x for x, m in zip(items, modality) if m]
        text = [x for x, m in zip(items, modality) if not m]
        return [g for g in (image, text) if g]

    def _split(self, indices: list[int]) -> list[list[int]]:
        batches = [indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def batches(self) -> list[list[int]]:
        """All batches of the current epoch, in order."""
        indices = self.indices()
        modality = [self.has_image[i] for i in indices]
        if not self.shuffle:
            # Batches of positions in the epoch (an index may occur twice in a mixture), ordered
            # by their first position, then mapped back to indices.
            batches = [b for g in self._groups(list(range(len(indices))), modality) for b in self._split(g)]
            return [[indices[p] for p in b] for b in sorted(batches, key=lambda b: b[0])]
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        mega = self.batch_size * MEGABATCH_MULT
        batches = []
        for group in self._groups(indices, modality):
            order = [group[i] for i in torch.randperm(len(group), generator=gen).tolist()]
            for start in range(0, len(order), mega):
                window = sorted(order[start : start + mega], key=lambda i: self.lengths[i], reverse=True)
                order[start : start + mega] = window
            batches.extend(self._split(order))
        return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        """Batches in the current epoch (a mixture's epochs may differ by a batch or two)."""
        n_image = sum(self.has_image[i] for i in self.indices())
        sizes = [n for n in (n_image, len(self.indices()) - n_image) if n]
        if self.drop_last:
            return sum(n // self.batch_size for n in sizes)
        return sum(-(-n // self.batch_size) for n in sizes)
