"""The optimizer's groups: each part's learning rate as the stage and config say."""
from __future__ import annotations

from torch import nn

from llava_lite.config import TrainConfig
from llava_lite.train.optim import build_optimizer
from llava_lite.train.stages import STAGES


class Parts(nn.Module):
    def __init__(self):
        super().__init__()
        self.projector = nn.Linear(4, 4)
        self.lm = nn.Linear(4, 4)


def lrs(t: TrainConfig) -> dict[str, float]:
    model = Parts()
    opt = build_optimizer(model, STAGES["instruct"], t)
    owner = {id(p): n.split(".")[0] for n, p in model.named_parameters()}
    return {owner[id(p)]: g["lr"] for g in opt.param_groups for p in g["params"]}


def test_projector_lr_defaults_to_lr_and_an_explicit_zero_is_kept():
    assert lrs(TrainConfig(lr=2e-5)) == {"projector": 2e-5, "lm": 2e-5}
    assert lrs(TrainConfig(lr=2e-5, projector_lr=1e-3)) == {"projector": 1e-3, "lm": 2e-5}
    # 0 is a value, not "unset": it used to fall back to train.lr and train the projector anyway
    assert lrs(TrainConfig(lr=2e-5, projector_lr=0.0)) == {"projector": 0.0, "lm": 2e-5}
