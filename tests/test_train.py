"""End-to-end training on tiny models: stages, resume, token-weighted accumulation, bad data."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from tiny import make_llava_data

from llava_lite.cli import main
from llava_lite.config import load_config
from llava_lite.conversation import DataError
from llava_lite.train import Trainer
from llava_lite.vision import VisionTower

CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_llava_data(tmp_path_factory.mktemp("data"), n=24)


def source(path, fmt="auto"):
    return f"data.sources=[{{path: {path}, format: {fmt}, image_folder: {Path(path).parent / 'images'}}}]"


def base(tiny_lm, out, *extra):
    return [f"model.lm={tiny_lm}", "model.init_from=null", "model.vision.model=tiny", "model.vision.pretrained=null", "model.dtype=float32",
            "data.num_workers=0", "data.max_length=128", "train.batch_size=4", "train.gradient_checkpointing=false",
            f"train.output_dir={out}", *extra]


def losses(out):
    return [json.loads(line)["loss"] for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_stage1_then_stage2_then_text_then_chat(tiny_lm, data, tmp_path, monkeypatch, capsys):
    s1, s2, s3 = tmp_path / "s1", tmp_path / "s2", tmp_path / "text"
    main(["train", str(CONFIGS / "stage1.yaml"), *base(tiny_lm, s1, source(data["captions"]), "train.max_steps=12",
                                                       "train.lr=1e-2", "train.warmup_ratio=0")])
    main(["train", str(CONFIGS / "stage2.yaml"), *base(tiny_lm, s2, source(data["conversations"]),
                                                       f"model.init_from={s1}", "train.max_steps=12", "train.lr=3e-3")])

    def no_vision(*a, **k):
        raise AssertionError("text-only training called the vision tower")

    monkeypatch.setattr(VisionTower, "forward", no_vision)
    main(["train", str(CONFIGS / "text_sft.yaml"), *base(tiny_lm, s3, source(data["alpaca"], "alpaca"),
                                                         f"model.init_from={s2}", "train.max_steps=12", "train.lr=3e-3")])
    for out in (s1, s2, s3):
        curve = losses(out)
        assert len(curve) == 12
        assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3, f"{out.name}: loss did not go down: {curve}"
        assert (out / "loss.png").is_file() and (out / "llava_lite.json").is_file()
    summary = json.loads((s1 / "train_summary.json").read_text())
    assert summary["trainable"]["lm"] == 0 and summary["trainable"]["projector"] > 0
    text_summary = json.loads((s3 / "train_summary.json").read_text())
    assert text_summary["trainable"]["projector"] == 0 and text_summary["trainable"]["lm"] > 0
    monkeypatch.undo()
    capsys.readouterr()
    main(["chat", "--model", str(s2), "--image", str(Path(data["captions"]).parent / "images" / "0.png"),
          "--prompt", "What colour is the image?", "--max-new-tokens", "8"])
    answer = capsys.readouterr().out.strip()
    assert answer  # some answer was printed
    monkeypatch.setattr("sys.stdin", io.StringIO("What colour is the image?\n"))  # piped stdin = the prompt
    main(["chat", "--model", str(s2), "--image", str(Path(data["captions"]).parent / "images" / "0.png"),
          "--max-new-tokens", "8"])
    assert capsys.readouterr().out.strip() == answer  # greedy: the same question gives the same answer


def test_lora_stage2_with_gradient_checkpointing(tiny_lm, data, tmp_path):
    out = tmp_path / "lora"
    main(["train", str(CONFIGS / "stage2_lora.yaml"), *base(tiny_lm, out, source(data["conversations"]),
                                                            "train.max_steps=10", "train.lr=1e-2", "lora.r=4",
                                                            "lora.alpha=8", "train.gradient_checkpointing=true")])
    meta = json.loads((out / "llava_lite.json").read_text())
    assert meta["lm_weights"] == "lora" and (out / "lm_adapter").is_dir() and not (out / "lm").exists()
    trainable = json.loads((out / "train_summary.json").read_text())["trainable"]
    from transformers import AutoModelForCausalLM

    lm_size = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_lm).parameters())
    assert 0 < trainable["lm (lora)"] < lm_size / 2 and trainable["projector"] > 0
    curve = losses(out)
    assert sum(curve[-3:]) < sum(curve[:3]), curve


def test_resume_gives_the_same_losses(tiny_lm, data, tmp_path, monkeypatch):
    """Killed after the step-4 checkpoint and resumed == never interrupted (crosses an epoch: 32 samples / 4)."""
    args = ["train.max_steps=10", "train.save_every=4", "train.lr=3e-3"]
    cfg = lambda out: load_config(CONFIGS / "stage2.yaml", base(tiny_lm, out, source(data["conversations"]), *args))
    Trainer(cfg(tmp_path / "a")).run()

    calls = {"n": 0}
    real_step = Trainer._step

    def dying_step(self, window):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt("simulated kill")
        return real_step(self, window)

    monkeypatch.setattr(Trainer, "_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "b")).run()
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "b" / "checkpoints").iterdir()] == ["step-0000004"]
    Trainer(cfg(tmp_path / "b"), resume=True).run()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == len(b) == 10
    assert a == pytest.approx(b, rel=1e-5)
    # A fresh run in a used directory replaces the old run's checkpoints and metrics.
    (tmp_path / "b" / "checkpoints" / "step-0000099").mkdir()
    Trainer(cfg(tmp_path / "b")).run()
    assert len(losses(tmp_path / "b")) == 10
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step-0000008", "step-0000010"]


def test_accumulation_is_weighted_by_supervised_tokens(tiny_lm, tmp_path):
    """One batch of 2 == two micro-batches of 1, although the answers differ in length."""
    recs = [{"instruction": "Say one word.", "output": "Yes."},
            {"instruction": "Say a sentence.", "output": "The quick brown fox jumps over the lazy dog, twice!"}]
    path = tmp_path / "two.json"
    path.write_text(json.dumps(recs))
    grads = {}
    for name, bs, accum in (("single", 2, 1), ("accum", 1, 2)):
        cfg = load_config(CONFIGS / "text_sft.yaml", base(tiny_lm, tmp_path / name, source(path, "alpaca"),
                                                          f"train.batch_size={bs}", f"train.grad_accum={accum}",
                                                          "train.max_steps=1", "train.max_grad_norm=1e9"))
        tr = Trainer(cfg)
        tr.setup()
        real = tr.optimizer.step

        def capture(*a, _tr=tr, _name=name, _real=real, **k):
            grads[_name] = {n: p.grad.clone() for n, p in _tr.model.named_parameters() if p.grad is not None}
            return _real(*a, **k)

        tr.optimizer.step = capture
        tr.train()
    assert grads["single"].keys() == grads["accum"].keys()
    for n in grads["single"]:
        torch.testing.assert_close(grads["single"][n], grads["accum"][n], rtol=1e-4, atol=1e-6)


def test_truncated_answers_are_skipped_and_counted(tiny_lm, tmp_path):
    recs = [{"instruction": "Q" * 10, "output": "short"}, {"instruction": "word " * 200, "output": "lost"}] * 2
    path = tmp_path / "t.json"
    path.write_text(json.dumps(recs))
    cfg = load_config(CONFIGS / "text_sft.yaml", base(tiny_lm, tmp_path / "o", source(path, "alpaca"),
                                                      "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1"))
    Trainer(cfg).run()
    rows = [json.loads(x) for x in (tmp_path / "o" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["skipped_total"] == 2
    assert sum(r["supervised_tokens"] for r in rows) == rows[-1]["supervised_tokens"] > 0  # only the short ones


@pytest.mark.parametrize("problem", ["missing", "corrupt"])
def test_bad_image_names_file_and_record(tiny_lm, tmp_path, problem):
    (tmp_path / "images").mkdir()
    if problem == "corrupt":
        (tmp_path / "images" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    recs = [{"id": "rec7", "image": "x.png", "conversations": [
        {"from": "human", "value": "<image>\nQ?"}, {"from": "gpt", "value": "A."}]}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(recs))
    cfg = load_config(CONFIGS / "stage2.yaml", base(tiny_lm, tmp_path / "o", source(path), "train.max_steps=1"))
    with pytest.raises(DataError, match=r"bad\.json:0 \(id='rec7'\) field 'image'.*x\.png"):
        Trainer(cfg).run()
