"""`llava-lite improve`: two rounds on tiny models (SFT and DPO each round, a row per round, every
round's data and model kept), a killed loop resumes at its round, the held-out stop rule, and the
mode-collapse guard stops a collapsing generator before it is trained on."""
from __future__ import annotations

import json
import random

import pytest
import yaml
from helpers.world import make_world

from data_tools import improve as improve_mod
from data_tools import pairs as pairs_mod
from data_tools.annotations import load_coco
from data_tools.improve import Loop, load_improve_config, rounds_without_gain
from data_tools.teachers.rule import grounded_qa
from llava_lite.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A pool of 24 short-answer questions on 8 images, and 8 held-out VQA questions on 4 others."""
    root = tmp_path_factory.mktemp("improve-world")
    make_world(root, n_images=8)
    make_world(root, n_images=4, seed=1, split="test")
    rng = random.Random(0)
    pool = [{"id": f"{s.id}-{k}", "image": s.file_name, "conversations": [
        {"from": "human", "value": "<image>\n" + qa["question"]}, {"from": "gpt", "value": qa["answer"]}]}
        for s in load_coco(root / "instances_train.json") for k, qa in enumerate(grounded_qa(s.objects, rng)[:3])]
    (root / "pool.json").write_text(json.dumps(pool))
    vqa = [{"question_id": f"{s.id}-{k}", "image": s.file_name, "text": qa["question"], "answer": qa["answer"]}
           for s in load_coco(root / "instances_test.json") for k, qa in enumerate(grounded_qa(s.objects, rng)[:2])]
    (root / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in vqa))
    (root / "general.txt").write_text("the cat sat on the mat\na red circle and a blue square\n")
    return root


def config(root, out, model, tiny_lm, **extra) -> dict:
    tiny = ["data.chat_template=null", "model.dtype=float32", "data.num_workers=0", "data.max_length=128",
            "train.batch_size=4", "train.max_steps=2", "train.gradient_checkpointing=false", "train.lr=1e-3"]
    return {"model": str(model), "prompts": str(root / "pool.json"), "out": str(out), "rounds": 2, "per_round": 8,
            "samples": 3, "max_new_tokens": 4, "verifier": "reference", "objective": "both",
            "sft_overrides": tiny, "dpo_overrides": tiny + ["train.projector_lr=1e-3"],
            "vqa": str(root / "vqa.jsonl"), "general": str(root / "general.txt"), "eval_image_folder": str(root),
            "diversity_floor": 0.0, "patience": 5, **extra}


def write(tmp_path, cfg) -> str:
    path = tmp_path / "improve.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_stop_rule_counts_rounds_since_the_best():
    assert rounds_without_gain([0.5, 0.6, 0.7]) == 0
    assert rounds_without_gain([0.5, 0.7, 0.6, 0.7]) == 2  # equal is no gain
    assert rounds_without_gain([0.5, 0.52], min_gain=0.05) == 1


@pytest.mark.slow  # two rounds of sampling, SFT, DPO and evaluation, then a resumed loop
def test_two_rounds_keep_everything_and_resume_at_the_killed_round(world, serve_model_dir, tiny_lm, tmp_path,
                                                                   monkeypatch, capsys):
    out = tmp_path / "run"
    path = write(tmp_path, config(world, out, serve_model_dir, tiny_lm))
    real = Loop.retrain

    def killed(self, k, start, data):  # round 2's training is killed
        if k == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(self, k, start, data)

    monkeypatch.setattr(Loop, "retrain", killed)
    with pytest.raises(KeyboardInterrupt):
        main(["improve", path])
    monkeypatch.undo()
    assert (out / "round-2" / "generation.json").is_file() and not (out / "round-2" / "row.json").exists()
    sampled = []
    monkeypatch.setattr(pairs_mod, "sample_answers", lambda *a, **k: sampled.append(1) or [])
    main(["improve", path])  # resumes: round 2's data is reused, nothing is sampled again
    assert not sampled
    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["stop"] == "2 round(s) done"
    for r in rows[1:]:
        assert r["prompts"] == 8 and r["kept"] + r["rejected"] + r["duplicates"] == 8
        assert r["vqa_accuracy"] is not None and r["general_ppl"] > 0 and r["answer_entropy"] > 0
        d = out / f"round-{r['round']}"
        assert r["model"] == str(d / ("dpo" if r["pairs"] else "sft"))
        assert (d / "sft" / "llava_lite.json").is_file() and (d / "data.json").is_file()
    # round 2 started from round 1's model
    assert json.loads((out / "round-2" / "sft" / "config.json").read_text())["model"]["init_from"] == rows[1]["model"]
    assert "| round |" in capsys.readouterr().out
    with pytest.raises(improve_mod.ConfigError, match="other \\['verifier'\\]"):  # another loop in the same out
        Loop(load_improve_config(path, ["verifier=agreement"]))


def test_collapsing_generator_stops_the_loop_before_training(world, serve_model_dir, tiny_lm, tmp_path,
                                                              monkeypatch):
    cfg = load_improve_config(write(tmp_path, config(world, tmp_path / "c", serve_model_dir, tiny_lm,
                                                     verifier="agreement", diversity_floor=0.5)))
    monkeypatch.setattr(pairs_mod, "sample_answers", lambda a, prompts, n, *x, **k: [["red"] * n for _ in prompts])
    monkeypatch.setattr(Loop, "retrain", lambda *a: pytest.fail("a collapsed round must not be trained on"))
    rows = Loop(cfg).run()
    assert len(rows) == 2 and rows[1]["kept"] == 8 and rows[1]["answer_entropy"] == 0.0
    assert rows[1]["stop"].startswith("diversity collapsed: answer_entropy 0.000 < floor 0.5")


def test_healthy_generator_passes_the_guard(world, serve_model_dir, tiny_lm, tmp_path, monkeypatch):
    """The same guard lets varied answers through (the reference answers, sampled back)."""
    cfg = load_improve_config(write(tmp_path, config(world, tmp_path / "h", serve_model_dir, tiny_lm,
                                                     verifier="agreement", diversity_floor=0.5, rounds=1)))
    monkeypatch.setattr(pairs_mod, "sample_answers", lambda a, prompts, n, *x, **k: [
        [pairs_mod.prompt_of(p)[1]] * n for p in prompts])
    trained = []
    monkeypatch.setattr(Loop, "retrain", lambda self, k, start, data: trained.append(k) or start)
    rows = Loop(cfg).run()
    assert trained == [1] and rows[1]["answer_entropy"] > 0.5 and rows[-1]["stop"] == "1 round(s) done"


def test_config_is_checked(tmp_path, world, serve_model_dir, tiny_lm):
    with pytest.raises(improve_mod.ConfigError, match="held-out"):
        load_improve_config(write(tmp_path, config(world, tmp_path, serve_model_dir, tiny_lm, vqa=None)))
    cfg = load_improve_config(write(tmp_path, config(world, tmp_path, serve_model_dir, tiny_lm, pope="nope.jsonl")))
    with pytest.raises(improve_mod.ConfigError, match="pope='nope.jsonl': no such file"):  # before anything loads
        Loop(cfg)
    cfg = load_improve_config(write(tmp_path, config(world, tmp_path, tmp_path / "no-model", tiny_lm)))
    with pytest.raises(Exception, match="no such model"):
        Loop(cfg)


def test_shipped_config_loads():
    cfg = load_improve_config(improve_mod.Path(__file__).parents[2] / "configs" / "improve.yaml",
                              ["rounds=2", "replay.0.weight=0.1"])
    assert cfg.rounds == 2 and cfg.replay[0].weight == 0.1 and cfg.replay[0].isolate_turns
    assert cfg.verifier == "agreement" and cfg.vqa and cfg.pope


def test_own_questions_follow_the_models_description():
    from data_tools.questions import caption_questions, mentions

    caption = "The image shows two objects. There is a small red circle at the top left. There is a large blue star."
    assert mentions(caption) == [("red", "circle"), ("blue", "star")]
    questions = [q.split("\n")[0] for q in caption_questions(caption)]
    assert "What color is the circle?" in questions and "What shape is the blue object?" in questions
    assert "Is there a red circle in the image?" in questions and "How many stars are there in the image?" in questions
    assert caption_questions("Nothing to see here.") == []


@pytest.mark.slow  # a round whose questions the model writes from its own descriptions
def test_captions_round(world, serve_model_dir, tiny_lm, tmp_path, monkeypatch):
    from data_tools import questions as questions_mod

    cfg = load_improve_config(write(tmp_path, config(world, tmp_path / "q", serve_model_dir, tiny_lm, rounds=1,
                                                     questions="captions", verifier="agreement", min_share=0.3)))
    original = questions_mod.own_prompts

    class Describer:  # the tiny random model describes nothing; this one speaks the world's description style
        def reply_batch(self, chats, max_new_tokens, **kw):
            return ["There is a small red circle and a large blue star."] * len(chats)

    monkeypatch.setattr(questions_mod, "own_prompts", lambda _, pool, rng, **k: original(Describer(), pool, rng))
    rows = Loop(cfg).run()
    data = json.loads((tmp_path / "q" / "round-1" / "generation.json").read_text())
    assert data["images"] == 8 and data["prompts"] == 8 and data["caption_examples"]
    assert rows[1]["prompts"] == 8
