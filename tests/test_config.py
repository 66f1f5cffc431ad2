"""Every shipped config loads; overrides are typed; unknown keys are errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from llava_lite.config import Config, ConfigError, load_config

ROOT = Path(__file__).parent.parent
# configs/improve.yaml is the improve loop's (tests/data_tools/test_improve.py loads it)
RUN_CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts
                     and p.name != "improve.yaml")
RUN_CONFIGS += sorted((ROOT / "llava_lite" / "demo" / "configs").glob("*.yaml"))  # the demo's presets (package data)


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config) and cfg.train.output_dir
    assert cfg.data.sources, f"{path} names no training data"


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")))
def test_accelerate_configs_are_yaml(path):
    assert yaml.safe_load(path.read_text())["distributed_type"]


def test_overrides_are_cast_to_field_types():
    cfg = load_config(ROOT / "configs" / "stage2.yaml",
                      ["train.lr=3e-4", "train.batch_size=8", "train.gradient_checkpointing=false",
                       "lora.target_modules=[q_proj, v_proj]", "model.init_from=null", "data.sources.0.weight=2"])
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.batch_size == 8 and cfg.train.gradient_checkpointing is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.model.init_from is None
    assert cfg.data.sources[0].weight == 2.0


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "unknown config key.*train.lrr"),
    ("train.batch_size=eight", "train.batch_size.*expected int"),
    ("train.stage=pretrain", "train.stage.*not one of"),
    ("train.lr", "key.path=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs" / "stage1.yaml", [override])


def test_unknown_key_in_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  stage: align\n  epocs: 2\n")
    with pytest.raises(ConfigError, match="train.epocs"):
        load_config(bad)
