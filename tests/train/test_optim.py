"""The optimizer's groups (each part's learning rate as the stage and config say) and the learning-rate schedule."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llava_lite.config import ConfigError, TrainConfig
from llava_lite.train.optim import build_optimizer, cosine_with_warmup
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


def schedule(total: int, warmup: int, **kw) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = cosine_with_warmup(opt, warmup, total, **kw)
    out = []
    for _ in range(total):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def test_warmup_stable_decay_holds_the_peak_then_runs_the_cosine_over_its_share():
    plain = schedule(100, 10)
    assert plain == schedule(100, 10, decay_ratio=1.0)  # the default is the cosine right after warmup
    assert plain[:10] == [pytest.approx((s + 1) / 10) for s in range(10)]
    assert plain[10] == 1.0 and plain[55] == pytest.approx(0.5)
    wsd = schedule(100, 10, decay_ratio=0.3)  # the cosine over the last 27 of the 90 steps after warmup: from 73
    assert wsd[:10] == plain[:10]
    assert wsd[10:74] == [1.0] * 64 and wsd[74] < 1.0
    assert wsd[73 + 13] == pytest.approx(0.5 * (1 + math.cos(math.pi * 13 / 27)))
    assert wsd[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 26 / 27)))


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.5])
def test_decay_ratio_outside_0_1_is_a_config_error(ratio):
    with pytest.raises(ConfigError, match="train.decay_ratio"):
        schedule(10, 1, decay_ratio=ratio)
