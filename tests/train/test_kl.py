"""KL to the base model (train.kl_to_base): the divergence itself, beta = 0 is exactly the plain loss
and gradients, the base starts equal to the model (zero KL, unchanged gradients), LoRA uses the
adapter-free LM, and on a tiny text SFT run a beta > 0 keeps general-text perplexity closer to the
base than beta = 0 (both measured here)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers.tiny import CORPUS, make_llava_data

from llava_lite.config import load_config
from llava_lite.eval.evaluate import text_perplexity
from llava_lite.model.llava import LlavaLite
from llava_lite.train.kl import kl_base_to_tuned
from llava_lite.train.recipe import Trainer

CONFIGS = Path(__file__).parents[2] / "configs"


def test_kl_is_base_to_tuned():
    torch.manual_seed(0)
    tuned, base = torch.randn(5, 11), torch.randn(5, 11)
    p_base, p_tuned = base.softmax(-1), tuned.softmax(-1)
    want = (p_base * (p_base.log() - p_tuned.log())).sum()
    assert float(kl_base_to_tuned(tuned, base)) == pytest.approx(float(want), rel=1e-5)
    assert float(kl_base_to_tuned(base, base)) == pytest.approx(0.0, abs=1e-6)
    assert float(kl_base_to_tuned(tuned, base)) != pytest.approx(float(kl_base_to_tuned(base, tuned)), rel=1e-3)


def overrides(tiny_lm, data, out, *extra):
    return [f"model.lm={tiny_lm}", "model.init_from=null", "data.chat_template=null", "model.vision.model=tiny",
            "model.vision.pretrained=null", "model.dtype=float32", "data.num_workers=0", "data.max_length=128",
            "train.batch_size=8", "train.gradient_checkpointing=false", f"train.output_dir={out}",
            f"data.sources=[{{path: {data['alpaca']}, format: alpaca}}]", *extra]


def first_step(tiny_lm, data, out, *extra):
    """Loss, gradients (before the optimizer moves anything) and logged KL of the first step."""
    trainer = Trainer(load_config(CONFIGS / "text_sft.yaml", overrides(tiny_lm, data, out, "train.max_grad_norm=1e9",
                                                                       *extra)))
    trainer.setup()
    seen = {}
    model = trainer.acc.unwrap_model(trainer.model)
    trainer.optimizer.step = lambda *a, **k: seen.update(
        {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    window = [next(trainer._epoch_iter(0, 0))]
    loss, _, total = trainer._step(window)
    return trainer, window, loss, total, seen


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_llava_data(tmp_path_factory.mktemp("kl-data"), n=24)


def test_beta_zero_is_exactly_the_plain_loss(tiny_lm, data, tmp_path):
    torch.manual_seed(0)
    trainer, window, loss, total, grads = first_step(tiny_lm, data, tmp_path / "a", "train.kl_to_base=0")
    assert trainer.objective.kl is None and grads
    # Today's loss, by hand, from the same starting weights (the optimizer never stepped).
    model = trainer.acc.unwrap_model(trainer.model)
    model.zero_grad(set_to_none=True)
    out = model(**{k: v for k, v in window[0].items() if k != "num_skipped"})
    (out.loss_sum / total).backward()
    assert loss == float(out.loss_sum.detach()) / total
    for name, p in model.named_parameters():
        if name in grads:
            assert torch.equal(grads[name], p.grad), name
    # beta > 0 from the same start: the base equals the model, so KL = 0 and the gradients are the CE's.
    torch.manual_seed(0)
    trainer_kl, _, loss_kl, _, grads_kl = first_step(tiny_lm, data, tmp_path / "b", "train.kl_to_base=1.0")
    assert trainer_kl.objective.kl is not None and trainer_kl.last_stats["kl"] == pytest.approx(0.0, abs=1e-6)
    assert loss_kl == pytest.approx(loss, rel=1e-6)
    for name in grads:
        torch.testing.assert_close(grads_kl[name], grads[name], rtol=1e-4, atol=1e-6)


def test_lora_base_is_the_adapter_free_lm(tiny_lm, data, tmp_path):
    torch.manual_seed(0)
    trainer, window, *_ = first_step(tiny_lm, data, tmp_path / "l", "train.kl_to_base=0.5", "lora.enabled=true",
                                     "lora.r=4", "lora.alpha=8")
    kl = trainer.objective.kl
    assert kl.reference.lm is None  # no second copy of the LM under LoRA
    model = trainer.acc.unwrap_model(trainer.model)
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.add_(0.5)  # move the adapters: the tuned model now differs from the base
        inputs = {k: v for k, v in window[0].items() if k != "num_skipped"}
        kl.arm()
        model(**inputs)
        moved = float(kl.kl_sum(inputs))
        with model.lm.disable_adapter():
            kl.arm()
            model(**inputs)
            same = float(kl.kl_sum(inputs))
    assert moved > 1e-3 and same == pytest.approx(0.0, abs=1e-5)


def general_ppl(model_dir, lines_path):
    return text_perplexity(LlavaLite.from_pretrained(model_dir), str(lines_path))


@pytest.mark.slow  # two 15-step training runs
def test_kl_keeps_general_text_closer_to_base(tiny_lm, data, tmp_path):
    general = tmp_path / "general.txt"
    general.write_text("\n".join(sorted(set(CORPUS))) + "\n")
    torch.manual_seed(0)
    base_ppl = text_perplexity(LlavaLite.build(load_config(CONFIGS / "text_sft.yaml", overrides(
        tiny_lm, data, tmp_path / "x")).model), str(general))
    moved = {}
    for beta in (0.0, 2.0):
        out = tmp_path / f"beta{beta}"
        Trainer(load_config(CONFIGS / "text_sft.yaml", overrides(
            tiny_lm, data, out, "train.max_steps=15", "train.lr=5e-3", "train.warmup_ratio=0",
            f"train.kl_to_base={beta}"))).run()
        ppl = general_ppl(out, general)
        print(f"beta={beta}: general ppl {ppl:.2f} (base {base_ppl:.2f})")
        moved[beta] = abs(math.log(ppl / base_ppl))
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert ("kl" in rows[-1]) == (beta > 0)
    assert moved[0.0] > 0.05, f"plain SFT should move general perplexity measurably: {moved}"
    assert moved[2.0] < 0.7 * moved[0.0], moved
