"""Expansion and curation: ROUGE-L, filters and dedup, Evol-Instruct expansion, tagging,
complexity-first diverse selection, the report, and mixtures with replay and curriculum."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from helpers.world import make_world

from data_tools.cli import main
from data_tools.expand import expand
from data_tools.filters import InstructionFilter, dedup
from data_tools.mix import Source, mix_epoch
from data_tools.rouge import lcs_length, rouge_l, tokens
from data_tools.tagging import complexity, diversity, heuristic_tags, select, teacher_tags
from data_tools.teachers import RuleTeacher
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.readers import read_conversations
from llava_lite.infer.openai_client import Request

SEEDS = ["Explain how photosynthesis works.", "Write a Python function that reverses a string.",
         "Give three tips for saving money on groceries.", "Summarize the plot of a famous fairy tale.",
         "Solve 12 * 7 and explain the steps."]


def _conv(q: str, a: str = "ok", images=None) -> Conversation:
    return Conversation([Message("user", q), Message("assistant", a)], images or [], id=q[:12])


def test_rouge_l_matches_hand_computed_values():
    assert lcs_length(tokens("a b c d"), tokens("a c d e")) == 3
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == 1.0
    assert rouge_l("the cat", "a dog") == 0.0 and rouge_l("", "x") == 0.0
    # LCS "the cat on mat" = 4; P = 4/5, R = 4/6 -> F = 2PR/(P+R)
    assert rouge_l("the cat sat on the mat", "The cat is on mat") == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))
    assert rouge_l("x y z w", "w x y") == rouge_l("w x y", "x y z w")


def test_instruction_filter_reasons():
    f = InstructionFilter(pool=["Explain how photosynthesis works in plants."])
    assert f.reason("Explain how photosynthesis works in green plants.").startswith("near duplicate")
    assert f.reason("Hi there") .startswith("too short")
    assert "blocked keyword 'draw'" in f.reason("Please draw a cat for me now.")
    assert f.reason("- Describe the water cycle please") == "starts with punctuation"
    assert f.reason("Describe the water cycle for a child.") is None


def test_dedup_keeps_first_and_respects_images():
    convs = [_conv("What is the capital of France?"), _conv("What is the capital of France ?"),
             _conv("Name a prime above 100."),
             _conv("<image>\nWhat is this?", images=["a.png"]), _conv("<image>\nWhat is this?", images=["b.png"])]
    kept, dropped = dedup(convs)
    assert [c.messages[0].content for c in kept] == [convs[0].messages[0].content, convs[2].messages[0].content,
                                                    convs[3].messages[0].content, convs[4].messages[0].content]
    assert len(dropped) == 1 and "near duplicate" in dropped[0][1]


def test_expand_is_filtered_reproducible_and_keeps_rejects():
    a = expand(SEEDS, RuleTeacher(), n_new=12, seed=7)
    b = expand(SEEDS, RuleTeacher(), n_new=12, seed=7)
    assert a.instructions == b.instructions and len(a.instructions) == 12
    assert expand(SEEDS, RuleTeacher(), n_new=12, seed=8).instructions != a.instructions
    pool = list(SEEDS)
    for row in a.instructions:  # every accepted instruction is novel against everything before it
        assert max(rouge_l(row["instruction"], p) for p in pool) <= 0.7
        pool.append(row["instruction"])
    assert {r["operation"] for r in a.instructions} >= {"constraint", "deepen", "reasoning"}
    assert a.rejects and all("reason" in r for r in a.rejects)
    assert any(r["reason"].startswith("near duplicate") for r in a.rejects)


def test_heuristic_tags_complexity_and_diversity():
    simple = _conv("Say hi.")
    rich = _conv("Write a Python function to solve 3 + 4, explain why step by step, in no more than three sentences.")
    visual = Conversation([Message("user", "<image>\nHow many circles are there?"), Message("assistant", "2")],
                          ["a.png"])
    assert heuristic_tags(simple) == ["open question"]
    assert {"coding", "math", "step-by-step reasoning", "format constraint"} <= set(heuristic_tags(rich))
    assert {"counting", "visual understanding"} <= set(heuristic_tags(visual))
    assert "shape recognition" in heuristic_tags(_conv("What shape is the red object?"))
    assert complexity(heuristic_tags(rich)) > complexity(heuristic_tags(simple))
    assert diversity([["a", "b"], ["b", "c"]]) == 3


def test_select_is_complexity_first_then_diverse():
    tags = [["a"], ["a", "b", "c"], ["a", "b", "c"], ["d"], ["a", "b"], ["e", "f"]]
    chosen = select(tags, 3, seed=0)
    assert chosen[0] in (1, 2) and set(chosen) == {chosen[0], 5, 3}  # the twin adds no new tag
    assert len(select(tags, 6)) == 6 and sorted(select(tags, 6)) == list(range(6))


def test_teacher_tagging_counts_rejects(tmp_path):
    class Tagger:
        name, concurrency = "fake", 1

        def complete(self, request: Request) -> str:
            return "" if "hi" in request.messages[-1]["content"] else "Coding, Math"

    tags, rejects = teacher_tags([_conv("Write code to add 2+2"), _conv("hi")], Tagger())
    assert tags == [["coding", "math"], None] and len(rejects) == 1 and rejects[0]["reason"] == "no tags in reply"


def test_mixture_proportions_replay_and_curriculum():
    gen = [_conv(f"general {i}") for i in range(300)]
    code = [_conv(f"code {i}") for i in range(50)]
    math = [_conv(f"math {i}") for i in range(100)]
    replay = [_conv(f"replay {i}") for i in range(40)]
    sources = [Source("general", gen, weight=0.5), Source("code", code, weight=0.3), Source("math", math, weight=0.2)]
    epoch = mix_epoch(sources, seed=1, epoch=0, size=1000, replay=Source("replay", replay), replay_fraction=0.1)
    counts = Counter(c.messages[0].content.split()[0] for c in epoch)
    assert len(epoch) == 1100
    assert counts == {"general": 500, "code": 300, "math": 200, "replay": 100}
    code_seen = Counter(c.id for c in epoch if c.id.startswith("code"))
    assert len(code_seen) == 50 and max(code_seen.values()) - min(code_seen.values()) <= 1  # with replacement, evenly
    again = mix_epoch(sources, seed=1, epoch=0, size=1000, replay=Source("replay", replay), replay_fraction=0.1)
    assert [c.id for c in again] == [c.id for c in epoch]
    other = mix_epoch(sources, seed=1, epoch=1, size=1000)
    assert [c.id for c in other[:50]] != [c.id for c in epoch[:50]]
    # sampled draws stay within tolerance of the weights over many small epochs
    small = Counter(c.messages[0].content.split()[0] for e in range(20)
                    for c in mix_epoch(sources, seed=2, epoch=e, size=37))
    assert abs(small["general"] / (20 * 37) - 0.5) < 0.03 and abs(small["code"] / (20 * 37) - 0.3) < 0.03
    ordered = mix_epoch([Source("g", [_conv("x" * n) for n in (30, 5, 12, 1)])], curriculum="length")
    assert [len(c.messages[0].content) for c in ordered] == [1, 5, 12, 30]
    with pytest.raises(ValueError, match="no records"):
        mix_epoch([Source("empty", [], weight=1.0)], size=3)


def test_cli_curation_pipeline_on_world_and_hand_written_set(tmp_path, capsys):
    root = make_world(tmp_path / "world", n_images=6)
    gen = tmp_path / "gen.json"
    assert main(["generate", "--annotations", str(root / "instances_train.json"), "--out", str(gen), "--short-fraction",
                 "0.5"]) == 0
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(SEEDS))
    new = tmp_path / "new.json"
    assert main(["expand", "--seeds", str(seeds), "--n", "6", "--out", str(new), "--seed", "1"]) == 0
    assert len(json.loads(new.read_text())) == 6
    text = tmp_path / "text.json"
    text.write_text(json.dumps([{"instruction": s, "input": "", "output": "An answer."} for s in SEEDS]))
    tags = tmp_path / "tags.jsonl"
    assert main(["tag", str(gen), str(tags)]) == 0
    rows = [json.loads(l) for l in tags.read_text().splitlines()]
    assert len(rows) == 18 and all(r["tags"] for r in rows)
    assert main(["report", str(gen), str(tmp_path / "report"), "--tags", str(tags)]) == 0
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["records"] == 18 and summary["with_images"] == 18 and summary["distinct_tags"] >= 5
    assert (tmp_path / "report" / "tags.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "report" / "lengths.png").stat().st_size > 1000
    picked = tmp_path / "picked.json"
    assert main(["select", str(gen), str(picked), "--n", "5", "--tags", str(tags)]) == 0
    assert len(json.loads(picked.read_text())) == 5 and json.loads(picked.read_text())[0]["image"].startswith("train/")
    assert main(["dedup", str(text), str(tmp_path / "dd.json")]) == 0
    mixed = tmp_path / "mix.json"
    assert main(["mix", "--source", f"vision:3:{gen}", "--source", f"text:1:{text}", "--size", "40",
                 "--curriculum", "length", "--out", str(mixed)]) == 0
    convs = read_conversations(mixed, image_folder=root)
    assert sum(bool(c.images) for c in convs) == 30 and len(convs) == 40
    assert main(["report", str(text), str(tmp_path / "r2")]) == 0
    capsys.readouterr()


def test_cli_on_the_shipped_hand_written_examples(tmp_path):
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "data_tools" / "examples"
    gen = tmp_path / "gen.json"
    assert main(["generate", "--annotations", str(examples / "scenes.txt"), "--out", str(gen), "--short-fraction",
                 "0.5"]) == 0
    records = json.loads(gen.read_text())
    assert len(records) == 9 and {r["image"] for r in records} == {"kitchen.jpg", "street.jpg", "park.jpg"}
    text = json.dumps(records)
    assert "red bus" in text and "person" in text
    new = tmp_path / "new.json"
    assert main(["expand", "--seeds", str(examples / "seeds.txt"), "--n", "10", "--out", str(new)]) == 0
    assert len(json.loads(new.read_text())) == 10
