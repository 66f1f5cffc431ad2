"""`llava-lite data pairs`: each verifier picks chosen and rejected from sampled answers or says why
not, hallucination pairs name what the image does not hold, and the written pairs train."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
from helpers.runs import CONFIGS, base
from helpers.world import make_world

from data_tools.annotations import load_coco
from data_tools.pairs import agreement, hallucination_pairs, judged, reference, self_pairs
from data_tools.teachers.rule import grounded_qa
from llava_lite.config import load_config
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.readers import read_conversations
from llava_lite.eval.judge import RuleJudge
from llava_lite.train.recipe import Trainer


def test_verifiers_pick_a_pair_or_say_why():
    right, wrong = ["Red.", "red", "blue", "Blue", "blue", "green"], ["blue", "blue"]
    pair = lambda v: (v.chosen, v.rejected, v.reason)
    assert pair(reference()(right, "red", "Q")) == ("Red.", "blue", "pair")  # a right sample; the commonest wrong
    assert pair(reference()(wrong, "red", "Q")) == ("red", "blue", "pair")  # none right: the reference is chosen
    assert pair(reference()(["Red", "red."], "red", "Q")) == ("Red", None, "every sample right")
    assert pair(reference()(right, None, "Q")) == (None, None, "no reference answer")
    assert pair(agreement(0.5)(right, None, "Q")) == ("blue", "Red.", "pair")  # 3 of 6 agree on blue
    assert pair(agreement(0.6)(right, None, "Q")) == (None, None, "no majority")
    assert pair(agreement()(["cat", "dog"], None, "Q")) == (None, None, "no majority")  # a tie is no majority
    assert pair(agreement()(["yes", "Yes"], None, "Q")) == ("yes", None, "samples agree")  # kept, no pair
    verify = judged(RuleJudge(), min_gap=3)
    assert pair(verify(["blue", "red", "green"], "red", "Q")) == ("red", "blue", "pair")
    assert pair(verify(["blue", "green"], "red", "Q")) == (None, None, "no sample rated high enough")


def test_self_pairs_count_every_prompt():
    prompts = [Conversation([Message("user", f"Q{i}?"), Message("assistant", "red")], id=f"q{i}") for i in range(3)]
    pairs, reasons = self_pairs(prompts, [["red", "blue"], ["red", "red"], ["green", "green"]], reference())
    assert [(p.messages[-1].content, p.rejected) for p in pairs] == [("red", "blue"), ("red", "green")]
    assert reasons == {"pair": 2, "every sample right": 1}  # the third is right every time: no pair
    assert all(p.validate() for p in pairs) and pairs[0].messages[0].content == "Q0?"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = make_world(tmp_path_factory.mktemp("world"), n_images=8)
    scenes = load_coco(root / "instances_train.json")
    rng = random.Random(0)
    records = [{"id": f"{s.id}-{k}", "image": s.file_name, "conversations": [
        {"from": "human", "value": "<image>\n" + qa["question"]}, {"from": "gpt", "value": qa["answer"]}]}
        for s in scenes for k, qa in enumerate(grounded_qa(s.objects, rng, short=False)) if qa["type"] != "exists"]
    (root / "questions.json").write_text(json.dumps(records))
    return root, scenes


def test_hallucination_pairs_name_what_the_image_does_not_hold(world):
    root, scenes = world
    prompts = read_conversations(root / "questions.json")
    pairs, reasons = hallucination_pairs(prompts, scenes, str(root), existence=1)
    by_file = {s.file_name: s for s in scenes}
    swapped = [p for p in pairs if p.id.endswith("-povid")]
    assert swapped and reasons["hallucinated answer"] == len(swapped)
    for p in swapped:
        scene = by_file[str(p.images[0])[len(str(root)) + 1:]]
        held = {o["category"] for o in scene.objects} | {o["color"] for o in scene.objects}
        new = set(p.rejected.lower().strip(".").split()) - set(p.messages[-1].content.lower().strip(".").split())
        assert len(new) == 1 and not new & held, (p.messages[-1].content, p.rejected)
    exists = [p for p in pairs if p.id.endswith("-pope")]
    assert len(exists) == 2 * len(scenes)  # one yes and one no question per image
    assert sorted(p.messages[-1].content for p in exists) == ["no"] * len(scenes) + ["yes"] * len(scenes)
    assert all({p.messages[-1].content, p.rejected} == {"yes", "no"} for p in exists)  # as the rule teacher writes


def test_pairs_cli_writes_pairs_that_train(world, serve_model_dir, tiny_lm, tmp_path):
    root, _ = world
    out = tmp_path / "pairs.jsonl"
    cmd = [sys.executable, "-m", "llava_lite.cli", "data", "pairs", str(root / "questions.json"), str(out),
           "--model", str(serve_model_dir), "--samples", "3", "--max-new-tokens", "6", "--limit", "6",
           "--annotations", str(root / "instances_train.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "pairs.jsonl.report.json").read_text())
    assert report["prompts"] == 6 and report["self"]["samples"] == 3
    pairs = read_conversations(out, image_folder=root)
    assert len(pairs) == report["written"] == report["self"]["pairs"] + report["hallucination"]["pairs"]
    assert report["self"]["pairs"] > 0  # a random model is rarely right
    assert all(p.rejected for p in pairs)
    src = f"data.sources=[{{path: {out}, image_folder: {root}}}]"
    Trainer(load_config(CONFIGS / "dpo.yaml", base(tiny_lm, tmp_path / "dpo", src, "train.max_steps=2"))).run()
    first = json.loads((tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["loss"] == pytest.approx(0.693147, abs=1e-5)
