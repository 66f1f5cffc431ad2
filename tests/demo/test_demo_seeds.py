"""`llava-lite demo --seeds N`: every (LM seed, training seed) cell once, base models shared, the spread reported,
a killed grid resumed. The demo itself is replaced by a stand-in that writes a report from its seeds."""
from __future__ import annotations

import json

import pytest

import llava_lite.demo.run as run
from llava_lite.cli import main
from llava_lite.config import ConfigError
from llava_lite.demo.presets import PRESETS
from llava_lite.demo.seeds import run_grid, spread

TYPES = ("color", "shape")


def fake_demo(calls):
    def demo(preset, out, lm_seed=0, train_seed=0):
        calls.append((lm_seed, train_seed))
        for name in ("world", "clip", "lm"):  # what the real demo builds through the cell's links
            (out / name / f"from-{lm_seed}-{train_seed}").write_text("")
        acc = 0.5 + 0.1 * lm_seed + 0.01 * train_seed
        report = {"seeds": {"lm": lm_seed, "train": train_seed}, "vqa_accuracy": acc,
                  "other_image_vqa_accuracy": 0.4, "vqa_accuracy_by_type": {t: acc for t in TYPES},
                  "other_image_vqa_accuracy_by_type": {t: 0.4 for t in TYPES}}
        (out / "report.json").write_text(json.dumps(report))
        return report
    return demo


def test_every_cell_once_shared_base_models_spread_and_resume(tmp_path, capsys):
    calls = []
    summary = run_grid("fast", tmp_path, 2, fake_demo(calls))
    assert calls == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert sorted(p.name for p in (tmp_path / "world").iterdir()) == ["from-0-0", "from-0-1", "from-1-0", "from-1-1"]
    assert sorted(p.name for p in (tmp_path / "lm1").iterdir()) == ["from-1-0", "from-1-1"]  # one LM per LM seed
    s = summary["spread"]
    assert s["vqa"]["mean"] == pytest.approx(0.555) and s["vqa"]["range"] == pytest.approx(0.11)
    assert s["gap"]["min"] == pytest.approx(0.1) and s["by_type"]["shape"]["max"] == pytest.approx(0.61)
    md = (tmp_path / "seeds.md").read_text()
    assert "| 1 | 1 | 61.0 | 40.0 | +21.0 | 61.0 | 61.0 |" in md and "| **range** | | 11.0 |" in md
    assert md in capsys.readouterr().out
    assert json.loads((tmp_path / "seeds.json").read_text())["spread"] == json.loads(json.dumps(s))
    # finished cells are reused; a cell killed before its marker is run again
    (tmp_path / "lm1-train0" / "DONE.json").unlink()
    assert run_grid("fast", tmp_path, 2, fake_demo(calls))["spread"] == s and calls[4:] == [(1, 0)]


def test_spread_of_rows():
    rows = [{"vqa": v, "other": 0.4, "gap": v - 0.4, "by_type": {"color": v}} for v in (0.6, 0.7, 0.65)]
    s = spread(rows)
    assert s["vqa"] == pytest.approx({"mean": 0.65, "min": 0.6, "max": 0.7, "range": 0.1})
    assert s["by_type"]["color"]["range"] == pytest.approx(0.1) and s["other"]["range"] == 0


@pytest.mark.parametrize("preset, n, message", [("fast", 1, "at least 2 seeds"), ("smol", 3, "pretrained LM")])
def test_grid_refuses_what_has_no_spread(tmp_path, preset, n, message):
    with pytest.raises(ConfigError, match=message):
        run_grid(preset, tmp_path, n, fake_demo([]))


def test_cli_seed_flags_are_checked(tmp_path, capsys):
    for argv, message in ((["--seeds", "3", "--lm-seed", "1"], "leave --lm-seed and --train-seed out"),
                          (["--preset", "smol", "--lm-seed", "1"], "takes a pretrained LM")):
        with pytest.raises(SystemExit) as e:
            main(["demo", "--out", str(tmp_path), *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_one_cells_seeds_reach_the_lm_and_both_stages(tmp_path, monkeypatch):
    """`run_demo(lm_seed=2, train_seed=1)`: the LM is built with lm.init_seed 2, stages 1 and 2 train with seed 1."""
    seen = {"overrides": []}

    class Stop(Exception):
        pass

    def build_base(out, preset, name):
        seen["preset"], seen["name"] = preset, name
        (out / "world").mkdir(parents=True)
        (out / "world" / "world.json").write_text("{}")
        return {"paths": {"lm": str(out / "lm")}}

    def train(config, overrides):
        seen["overrides"].append(overrides)
        if len(seen["overrides"]) == 2:
            raise Stop
        return tmp_path / "stage1"

    monkeypatch.setattr("llava_lite.demo.pretrain.build_base", build_base)
    monkeypatch.setattr(run, "_data", lambda out, preset, world: {k: tmp_path / k for k in
                                                                   ("instruct_train", "short_train", "text_train")})
    monkeypatch.setattr(run, "_train", train)
    with pytest.raises(Stop):
        run.run_demo("fast", tmp_path, lm_seed=2, train_seed=1)
    assert seen["preset"]["lm"] == {**PRESETS["fast"]["lm"], "init_seed": 2} and seen["name"] == "fast"
    assert all("train.seed=1" in o for o in seen["overrides"])
