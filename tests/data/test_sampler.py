"""ModalityLengthBatchSampler: modality purity, coverage, determinism, length grouping."""
from __future__ import annotations

import random

import pytest
import torch
from torch.utils.data import DataLoader

from llava_lite.data.sampler import MEGABATCH_MULT, ModalityLengthBatchSampler


def make_data(n: int, seed: int = 0) -> tuple[list[int], list[bool]]:
    rng = random.Random(seed)
    return [rng.randint(5, 500) for _ in range(n)], [rng.random() < 0.6 for _ in range(n)]


def test_batches_are_single_modality_and_cover_every_index_once() -> None:
    lengths, has_image = make_data(1003)
    sampler = ModalityLengthBatchSampler(lengths, has_image, batch_size=8, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert all(len({has_image[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(1003))
    assert all(1 <= len(b) <= 8 for b in batches)
    assert sum(len(b) < 8 for b in batches) <= 2  # at most one partial batch per modality


def test_drop_last_drops_one_partial_batch_per_modality() -> None:
    lengths, has_image = [10] * 23, [True] * 10 + [False] * 13
    sampler = ModalityLengthBatchSampler(lengths, has_image, batch_size=4, drop_last=True)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 2 + 3
    assert all(len(b) == 4 for b in batches)
    assert len({i for b in batches for i in b}) == 20


def test_same_seed_and_epoch_give_the_same_order() -> None:
    lengths, has_image = make_data(500)
    a = ModalityLengthBatchSampler(lengths, has_image, batch_size=4, seed=1)
    b = ModalityLengthBatchSampler(lengths, has_image, batch_size=4, seed=1)
    first = list(a)
    assert first == list(b) == list(a)
    a.set_epoch(1)
    second = list(a)
    assert second != first
    assert sorted(map(sorted, second)) != sorted(map(sorted, first))  # the batches themselves change, too
    b.set_epoch(1)
    assert list(b) == second
    a.set_epoch(0)
    assert list(a) == first
    assert list(ModalityLengthBatchSampler(lengths, has_image, batch_size=4, seed=2)) != first


def test_modalities_interleave() -> None:
    lengths, has_image = make_data(400)
    kinds = [has_image[b[0]] for b in ModalityLengthBatchSampler(lengths, has_image, batch_size=4)]
    switches = sum(x != y for x, y in zip(kinds, kinds[1:]))
    assert switches > 10  # not all image batches then all text batches


def test_lengths_sorted_within_a_megabatch() -> None:
    # One modality and at most one mega-batch: the batches partition a single descending order.
    batch_size = 4
    rng = random.Random(0)
    lengths = [rng.randint(1, 1000) for _ in range(batch_size * MEGABATCH_MULT)]
    batches = list(ModalityLengthBatchSampler(lengths, [False] * len(lengths), batch_size=batch_size))
    per_batch = [[lengths[i] for i in b] for b in batches]
    assert all(ls == sorted(ls, reverse=True) for ls in per_batch)
    ordered = sorted(per_batch, key=lambda ls: ls[0], reverse=True)
    flat = [x for ls in ordered for x in ls]
    assert flat == sorted(lengths, reverse=True)


def test_every_batch_sorted_with_several_megabatches() -> None:
    lengths, has_image = make_data(2000)
    for b in ModalityLengthBatchSampler(lengths, has_image, batch_size=4):
        ls = [lengths[i] for i in b]
        assert ls == sorted(ls, reverse=True)


def test_no_shuffle_keeps_dataset_order() -> None:
    has_image = [True, False, True, True, False, False, True]
    sampler = ModalityLengthBatchSampler([1, 9, 2, 8, 3, 7, 4], has_image, batch_size=2, shuffle=False)
    assert list(sampler) == [[0, 2], [1, 4], [3, 6], [5]]
    sampler.set_epoch(5)
    assert list(sampler) == [[0, 2], [1, 4], [3, 6], [5]]


def test_text_only_data_is_just_length_grouped() -> None:
    lengths = list(range(1, 41))
    batches = list(ModalityLengthBatchSampler(lengths, [False] * 40, batch_size=5, seed=4))
    assert len(batches) == 8
    assert sorted(i for b in batches for i in b) == list(range(40))


def test_works_as_dataloader_batch_sampler() -> None:
    lengths, has_image = make_data(30)
    data = torch.arange(30)
    sampler = ModalityLengthBatchSampler(lengths, has_image, batch_size=4)
    loader = DataLoader(data, batch_sampler=sampler)
    assert sorted(torch.cat(list(loader)).tolist()) == list(range(30))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="has_image"):
        ModalityLengthBatchSampler([1, 2], [True], batch_size=1)
    with pytest.raises(ValueError, match="batch_size"):
        ModalityLengthBatchSampler([1], [True], batch_size=0)


def test_epoch_indices_from_a_mixture() -> None:
    """A mixture's epoch may repeat and leave out indices, and differ in size from epoch to epoch."""
    lengths, has_image = make_data(60)
    draws = {0: list(range(60)) + list(range(10)), 1: list(range(0, 60, 3))}  # 70 records, then 20
    sampler = ModalityLengthBatchSampler(lengths, has_image, batch_size=4, seed=1, epoch_indices=draws.__getitem__)
    for epoch, want in draws.items():
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == sorted(want)  # repeats kept, others left out
        assert all(len({has_image[i] for i in b}) == 1 for b in batches)
        n_image = sum(has_image[i] for i in want)
        assert len(sampler) == -(-n_image // 4) + -(-(len(want) - n_image) // 4)


def test_no_shuffle_keeps_the_epoch_order_with_repeats() -> None:
    """A curriculum's order: batches cut in the epoch's order per modality, ordered by first position."""
    has_image = [True, False, True, False]
    order = [3, 0, 3, 2, 1, 0, 1, 2]
    sampler = ModalityLengthBatchSampler([1] * 4, has_image, batch_size=2, shuffle=False, epoch_indices=lambda e: order)
    assert list(sampler) == [[3, 3], [0, 2], [1, 1], [0, 2]]
