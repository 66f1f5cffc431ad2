"""A stage-2 optimizer step without any image leaves the projector alone. The empty image batch that
keeps every rank's modules in step gives the projector a zero gradient, and AdamW would still move it
on that step (its momentum from earlier image steps)."""
from __future__ import annotations

import pytest
import torch
from helpers.runs import CONFIGS, base, source

from llava_lite.config import load_config
from llava_lite.train.recipe import Trainer


@pytest.mark.slow  # a 12-step training run
def test_text_only_steps_do_not_move_the_projector(tiny_lm, data, tmp_path, monkeypatch):
    cfg = load_config(CONFIGS / "stage2.yaml", base(tiny_lm, tmp_path / "run", source(data["conversations"]),
                                                    "train.max_steps=12", "train.lr=3e-3"))
    seen = []
    real_step = Trainer._step

    def watched(self, window):
        proj = self.acc.unwrap_model(self.model).projector
        before = [p.detach().clone() for p in proj.parameters()]
        out = real_step(self, window)
        moved = any(not torch.equal(b, p) for b, p in zip(before, proj.parameters()))
        seen.append((any(b.get("pixel_values") is not None for b in window), moved))
        return out

    monkeypatch.setattr(Trainer, "_step", watched)
    Trainer(cfg).run()
    first_image = next(i for i, (images, _) in enumerate(seen) if images)
    later_text = [moved for images, moved in seen[first_image:] if not images]
    assert later_text and not any(later_text), seen  # text-only steps after image steps: projector unchanged
    assert all(moved for images, moved in seen if images)
