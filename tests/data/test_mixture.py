"""The one mixture draw (llava_lite.data.mixture), shared by training and `llava-lite data mix`:
proportions, fresh subsets per epoch, determinism per (seed, epoch), curriculum order."""
from __future__ import annotations

import collections
import json

import pytest

from llava_lite.config import ConfigError, SourceConfig
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.mixture import (
    difficulty,
    draw,
    epoch_draw,
    epoch_rng,
    length_score,
    load_mixture,
    proportional_counts,
    repeat_counts,
)


def test_counts():
    assert repeat_counts([10, 4, 3, 7], [2.5, 0.5, 0.0, 1.0]) == [25, 2, 0, 7]
    assert repeat_counts([3], [0.5]) == [2]  # halves round up
    assert proportional_counts(10, [0.5, 0.3, 0.2]) == [5, 3, 2]
    assert sum(proportional_counts(37, [1, 1, 1])) == 37
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        repeat_counts([3], [-1.0])
    with pytest.raises(ValueError, match="positive weight"):
        proportional_counts(5, [0.0])


def test_draw_uses_every_record_before_repeating():
    rng = epoch_rng(0, 0)
    picks = draw(10, 25, rng)
    assert len(picks) == 25
    assert sorted(picks[:10]) == sorted(picks[10:20]) == list(range(10))  # two whole passes
    assert len(set(picks[20:])) == 5  # then a subset without repeats
    assert draw(4, 0, rng) == []
    with pytest.raises(ValueError, match="from a source with none"):
        draw(0, 1, rng)


def test_proportions_fresh_subsets_and_determinism():
    sizes, weights = [300, 100, 40], [1.0, 0.5, 2.5]
    counts = repeat_counts(sizes, weights)
    assert counts == [300, 50, 100]
    epochs = [epoch_draw(sizes, counts, seed=7, epoch=e) for e in range(20)]
    for pairs in epochs:
        per_source = collections.Counter(s for s, _ in pairs)
        assert per_source == {0: 300, 1: 50, 2: 100}  # exact every epoch
        assert sorted(i for s, i in pairs if s == 0) == list(range(300))  # weight 1: each record once
        times = collections.Counter(i for s, i in pairs if s == 2)
        assert set(times.values()) <= {2, 3} and len(times) == 40  # weight 2.5: twice, a random half thrice
    halves = [frozenset(i for s, i in pairs if s == 1) for pairs in epochs]
    assert len(set(halves)) == 20  # weight 0.5: a different half every epoch
    seen = collections.Counter(i for half in halves for i in half)
    assert len(seen) == 100 and all(3 <= n <= 17 for n in seen.values())  # each record about half the time
    assert epoch_draw(sizes, counts, seed=7, epoch=3) == epochs[3]  # same (seed, epoch): same order
    assert epoch_draw(sizes, counts, seed=8, epoch=3) != epochs[3]
    assert [s for s, _ in epochs[0][:40]] != sorted(s for s, _ in epochs[0][:40])  # sources interleave


def test_curriculum_sorts_but_the_draw_stays_random():
    sizes, counts = [6, 4], [3, 4]
    scores = [[5, 1, 3, 2, 6, 4], [0.5, 2.5, 4.5, 6.5]]
    for epoch in range(3):
        pairs = epoch_draw(sizes, counts, 0, epoch, scores)
        values = [scores[s][i] for s, i in pairs]
        assert values == sorted(values) and len(pairs) == 7
    subsets = {frozenset(i for s, i in epoch_draw(sizes, counts, 0, e, scores) if s == 0) for e in range(10)}
    assert len(subsets) > 1


def _conv(text, images=()):
    return Conversation([Message("user", "<image>\n" * len(images) + text), Message("assistant", "ok")], list(images))


def test_difficulty_scores():
    assert length_score(_conv("abc")) < length_score(_conv("abcdef")) < length_score(_conv("a", ["x.png"]))
    tags = difficulty("tags")  # the data tools' heuristic tagger
    assert tags(_conv("Write Python code to solve 2+2 step by step.")) > tags(_conv("Hello."))
    with pytest.raises(ValueError, match="unknown curriculum 'hard'"):
        difficulty("hard")


def test_load_mixture_maps_epochs_to_dataset_indices(tmp_path):
    a = [{"instruction": f"a{i}", "output": "x"} for i in range(8)]
    b = [{"instruction": f"b{i}", "output": "y"} for i in range(4)]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    sources = [SourceConfig(path=str(tmp_path / "a.json"), weight=0.5),
               SourceConfig(path=str(tmp_path / "b.json"), weight=1.5, name="replay")]
    mix = load_mixture(sources, seed=0, images=False)
    assert len(mix.conversations) == 12 and mix.counts_at(0) == [4, 6] and mix.phases() == 1
    assert mix.describe().startswith("10 records per epoch (a.json 4/8, replay 6/4")
    for epoch in range(3):
        names = [mix.conversations[i].messages[0].content for i in mix.epoch(epoch)]
        assert sum(n.startswith("a") for n in names) == 4 and len(set(n for n in names if n.startswith("a"))) == 4
        assert sum(n.startswith("b") for n in names) == 6
        assert {n for n in names if n.startswith("b")} == {"b0", "b1", "b2", "b3"}
    assert mix.epoch(1) == mix.epoch(1) and mix.epoch(1) != mix.epoch(2)
    with pytest.raises(ConfigError, match="leave no record"):
        load_mixture([SourceConfig(path=str(tmp_path / "a.json"), weight=0.0)], seed=0, images=False)


def test_a_list_of_weights_is_a_schedule_over_epochs(tmp_path):
    """[0, 1] leaves a source out of epoch 0 and takes it whole from epoch 1 on; the last weight holds on."""
    a = [{"instruction": f"a{i}", "output": "x"} for i in range(8)]
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps([{"instruction": f"b{i}", "output": "y"} for i in range(4)]))
    sources = [SourceConfig(path=str(tmp_path / "a.json"), weight=[1.0, 0.5]),
               SourceConfig(path=str(tmp_path / "b.json"), weight=[0, 1], name="late")]
    mix = load_mixture(sources, seed=0, images=False)
    assert mix.phases() == 2 and [mix.counts_at(e) for e in range(4)] == [[8, 0], [4, 4], [4, 4], [4, 4]]
    assert mix.describe() == ("epoch 0: 8 records (a.json 8/8, late 0/4); from epoch 1: 8 records "
                              "(a.json 4/8, late 4/4); drawn afresh each epoch")
    first = [mix.conversations[i].messages[0].content for i in mix.epoch(0)]
    assert sorted(first) == sorted(f"a{i}" for i in range(8))
    with pytest.raises(ConfigError, match="leave no record in epoch 1"):
        load_mixture([SourceConfig(path=str(tmp_path / "a.json"), weight=[1, 0])], seed=0, images=False)
