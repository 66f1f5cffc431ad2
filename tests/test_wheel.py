"""A normal (non-editable) install works outside the repository: build the wheel, install it into
a fresh virtual environment (dependencies come from the test venv's site-packages, added after
its own), then run the demo's CLI and a stage-1 training of a tiny config from another folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from helpers.tiny import make_llava_data

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # builds and installs the wheel, runs it in subprocesses


def run(cmd: list[str], cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ of a fresh venv holding only the llava-lite wheel."""
    tmp = tmp_path_factory.mktemp("wheel")
    try:
        import setuptools  # noqa: F401  (build in this venv: no download of a build backend)
        isolation = ["--no-build-isolation"]
    except ImportError:
        isolation = []
    # Built from a copy: setuptools' build/ folder would otherwise land in the checkout, and a stale
    # one there carries files the tree no longer has into the next wheel.
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "*.egg-info",
                                                              "__pycache__", ".pytest_cache"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-w", str(tmp / "dist"), str(src)], cwd=tmp)
    [wheel] = (tmp / "dist").glob("llava_lite-*.whl")
    env_dir = tmp / "fresh"
    venv.create(env_dir, with_pip=False)
    fresh = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--no-deps", "-q",
         str(wheel)], cwd=tmp)
    # The test venv's packages, after the fresh venv's own (its .pth files, e.g. the editable
    # install of this checkout, are not processed for a path added this way).
    (fresh / "test_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return env_dir / "bin"


def test_the_wheel_is_what_runs(installed, tmp_path):
    where = run([str(installed / "python"), "-c", "import llava_lite; print(llava_lite.__file__)"], cwd=tmp_path)
    assert str(installed.parent) in where.stdout and str(ROOT) not in where.stdout


def test_demo_help_from_the_wheel(installed, tmp_path):
    out = run([str(installed / "llava-lite"), "demo", "--preset", "fast", "--help"], cwd=tmp_path).stdout
    assert "--preset" in out


def test_demo_presets_are_package_data(installed, tmp_path):
    code = ("from importlib.resources import files; import yaml; "
            "print(yaml.safe_load((files('llava_lite.demo') / 'configs' / 'fast_stage1.yaml').read_text())"
            "['train']['stage'])")
    assert run([str(installed / "python"), "-c", code], cwd=tmp_path).stdout.strip() == "align"


def test_stage1_training_from_the_wheel(installed, tiny_lm, tmp_path):
    data = make_llava_data(tmp_path / "data", n=8)
    config = tmp_path / "stage1.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "model": {"vision": {"model": "tiny", "pretrained": None}, "lm": str(tiny_lm), "dtype": "float32"},
        "data": {"sources": [{"path": str(data["captions"]), "image_folder": str(tmp_path / "data" / "images")}],
                 "max_length": 128},
        "train": {"stage": "align", "output_dir": str(tmp_path / "run"), "max_steps": 2, "batch_size": 4},
    }))
    run([str(installed / "llava-lite"), "train", str(config)], cwd=tmp_path)
    assert (tmp_path / "run" / "llava_lite.json").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
