"""Checkpoints of what trains, under the model shapes that make that hard."""
from __future__ import annotations

import pytest
from helpers.runs import CONFIGS, base, kill_at, losses, source
from helpers.tiny import make_tiny_lm

from llava_lite.config import load_config
from llava_lite.model.llava import LlavaLite
from llava_lite.train.recipe import Trainer


def killed_at_step(monkeypatch, cfg, n: int) -> None:
    """Run `cfg` and kill it (KeyboardInterrupt) as its n-th optimizer step starts."""
    kill_at(monkeypatch, n)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg).run()
    monkeypatch.undo()


def test_tied_embeddings_checkpoint_once_and_resume_exactly(data, tmp_path, monkeypatch):
    """An LM whose input and output embeddings are one tensor (the demo's LM): a checkpoint holds
    it once (safetensors refuses shared tensors), resumes exactly, and the saved model keeps the tie."""
    lm = make_tiny_lm(tmp_path / "tied_lm", tie=True)
    args = ["train.max_steps=4", "train.save_every=2", "train.lr=3e-3"]
    cfg = lambda out: load_config(CONFIGS / "text_sft.yaml", base(lm, out, source(data["alpaca"], "alpaca"), *args))
    Trainer(cfg(tmp_path / "a")).run()
    killed_at_step(monkeypatch, cfg(tmp_path / "b"), 3)
    Trainer(cfg(tmp_path / "b"), resume=True).run()
    assert losses(tmp_path / "a") == pytest.approx(losses(tmp_path / "b"), rel=1e-6)
    saved = LlavaLite.from_pretrained(tmp_path / "b")
    assert saved.lm.get_input_embeddings().weight.data_ptr() == saved.lm.get_output_embeddings().weight.data_ptr()


@pytest.mark.slow  # 30 training steps (the tied-embeddings resume stays fast)
def test_resume_gives_the_same_losses(tiny_lm, data, tmp_path, monkeypatch):
    """Killed after the step-4 checkpoint and resumed == never interrupted (crosses an epoch: 32 samples / 4)."""
    args = ["train.max_steps=10", "train.save_every=4", "train.lr=3e-3"]
    cfg = lambda out: load_config(CONFIGS / "stage2.yaml", base(tiny_lm, out, source(data["conversations"]), *args))
    Trainer(cfg(tmp_path / "a")).run()
    killed_at_step(monkeypatch, cfg(tmp_path / "b"), 6)
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
