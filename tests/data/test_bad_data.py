"""Dirty data: structural defects reported together before any model is built (or skipped into
rejects.jsonl), unreadable images skipped mid-run (also in DataLoader workers), a bad-fraction
stop, and a kill + resume that is still exact with bad records in the data."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers.hostile import BAD, GOOD, STRUCTURAL, make_hostile

from llava_lite.cli import main
from llava_lite.config import load_config
from llava_lite.data.conversation import DataError
from llava_lite.data.loader import TrainData
from llava_lite.train import recipe as train_module
from llava_lite.train.recipe import Trainer

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return make_hostile(tmp_path_factory.mktemp("hostile"))


def args(tiny_lm, out, data, *extra):
    source = f"data.sources=[{{path: {data['data']}, image_folder: {data['images']}}}]"
    return [
        str(CONFIGS / "stage2.yaml"),
        f"model.lm={tiny_lm}",
        "model.init_from=null",
        "data.chat_template=null",
        "model.vision.model=tiny",
        "model.vision.pretrained=null",
        "model.dtype=float32",
        "data.max_length=128",
        "train.batch_size=4",
        "train.gradient_checkpointing=false",
        "data.num_workers=0",
        f"train.output_dir={out}",
        source,
        *extra,
    ]


def rejects(out) -> dict[str, dict]:
    rows = [json.loads(x) for x in (Path(out) / "rejects.jsonl").read_text().splitlines()]
    assert len({(r["source"], r["reason"]) for r in rows}) == len(rows)  # each record once, however many epochs
    return {r["id"]: r for r in rows}


def losses(out):
    return [json.loads(x)["loss"] for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # training runs, killed and resumed
def test_hostile_set_trains_with_skip_and_resumes_exactly(tiny_lm, hostile, tmp_path, monkeypatch, capsys):
    skip = ["data.on_bad_record=skip", "data.max_bad_fraction=0.5", "train.max_steps=8", "train.save_every=3",
            "train.lr=3e-3"]
    trained = {}  # epoch -> supervised rows; 14 good records: 10 image + 4 text rows in epoch 0
    real_step = Trainer._step

    def counting_step(self, window):
        trained[self.state["epoch"]] = trained.get(self.state["epoch"], 0) + sum(
            int((b["labels"] != -100).any(dim=1).sum()) for b in window)
        return real_step(self, window)

    monkeypatch.setattr(Trainer, "_step", counting_step)
    main(["train", *args(tiny_lm, tmp_path / "a", hostile, "data.num_workers=2", *skip)])  # image rejects in workers
    monkeypatch.undo()
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out and "data: skipped 8 bad record(s)" in printed.out
    assert trained[0] == len(GOOD)
    found = rejects(tmp_path / "a")
    assert {k: r["reason"] for k, r in found.items()} == BAD
    assert all(found[k]["kind"] == "record" and found[k]["step"] == 0 for k in STRUCTURAL)
    assert all(found[k]["kind"] == "image" and found[k]["step"] >= 1 for k in set(BAD) - set(STRUCTURAL))
    assert str(hostile["data"]) in found["emptyfile"]["source"] and "empty.jpg" in found["emptyfile"]["message"]
    curve = losses(tmp_path / "a")
    assert len(curve) == 8 and all(math.isfinite(x) for x in curve)
    summary = json.loads((tmp_path / "a" / "train_summary.json").read_text())
    assert summary["rejects"]["bad_records"] == 12 and summary["rejects"]["records"] == 26
    assert summary["rejects"]["by_reason"]["unreadable image"] == 3 and summary["skipped"] >= 4

    calls = {"n": 0}

    def dying_step(self, window):  # killed in the 5th step, after the step-3 checkpoint
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, window)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        main(["train", *args(tiny_lm, tmp_path / "b", hostile, *skip)])
    monkeypatch.undo()
    main(["train", *args(tiny_lm, tmp_path / "b", hostile, *skip), "--resume"])
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # bit-exact, with or without workers
    assert rejects(tmp_path / "b") == rejects(tmp_path / "a")
    assert json.loads((tmp_path / "b" / "train_summary.json").read_text())["rejects"] == {
        **summary["rejects"], "file": str(tmp_path / "b" / "rejects.jsonl")}


def test_structural_defects_are_reported_together_before_any_model(tiny_lm, hostile, tmp_path, monkeypatch, capsys):
    def no_model(*a, **k):
        raise AssertionError("a model was built before the data was checked")

    monkeypatch.setattr(train_module, "build_model", no_model)
    with pytest.raises(SystemExit) as e:
        main(["train", *args(tiny_lm, tmp_path / "o", hostile)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: 8 bad record(s) (") and "\n" not in err and "Traceback" not in err
    for reason in set(BAD[k] for k in STRUCTURAL):
        assert reason in err
    # the first few by file:line (a JSON list: the line the record starts on), and how to fix it
    lines = hostile["data"].read_text().splitlines()
    first = err.split("first: ")[1].split(";")[0]
    path, line = first.split(" (id=")[0].rsplit(":", 1)
    assert path == str(hostile["data"]) and '"id": "twoplaceholders"' in lines[int(line)]
    assert "data.on_bad_record=skip" in err


def test_too_many_bad_records_stop_the_run(tiny_lm, hostile, tmp_path):
    cfg = load_config(args(tiny_lm, tmp_path / "o", hostile, "data.on_bad_record=skip")[0],
                      args(tiny_lm, tmp_path / "o", hostile, "data.on_bad_record=skip")[1:])
    with pytest.raises(DataError, match=r"8 of 26 records are bad \(30.8%\), more than data.max_bad_fraction=0.01"):
        TrainData(cfg.data, batch_size=4, seed=0, mode="chat", images=True)
    # image defects count as they are found: 8 structural + 4 images > 40% stops in the first epoch
    over = args(tiny_lm, tmp_path / "o", hostile, "data.on_bad_record=skip", "data.max_bad_fraction=0.4",
                "train.max_steps=8")
    with pytest.raises(DataError, match=r"(9|10|11|12) of 26 records are bad.*latest: .*\.jpg"):
        Trainer(load_config(over[0], over[1:])).run()
    assert 1 <= sum(1 for _ in open(tmp_path / "o" / "rejects.jsonl")) - 8 <= 4


def test_truncated_answer_names_its_id(tiny_lm, tmp_path):
    recs = [{"id": "short", "instruction": "Q", "output": "short"},
            {"id": "long", "instruction": "word " * 200, "output": "lost"}]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(recs))
    a = args(tiny_lm, tmp_path / "o", {"data": path, "images": tmp_path}, "train.max_steps=1",
             "train.batch_size=2")
    cfg = load_config(CONFIGS / "text_sft.yaml", [*a[1:], f"data.sources=[{{path: {path}, format: alpaca}}]"])
    Trainer(cfg).run()
    found = rejects(tmp_path / "o")
    assert list(found) == ["long"] and found["long"]["reason"] == "answer truncated away"
    assert found["long"]["kind"] == "truncated"
    summary = json.loads((tmp_path / "o" / "train_summary.json").read_text())
    assert summary["rejects"]["bad_records"] == 0 and summary["skipped"] == 1  # truncation is not bad data
