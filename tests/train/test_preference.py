"""Preference training (train.stage=preference): the first step's loss is ln 2, the loss is the
hand computation from answer log-probs, a pair's image is encoded once and the head runs at answer
positions only, two processes equal one, a killed run resumes exactly, and the model learns to
prefer the chosen answers."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers.runs import CONFIGS, base, kill_at, torchrun
from helpers.tiny import make_pair_data

from llava_lite.config import ConfigError, load_config
from llava_lite.constants import IGNORE_INDEX
from llava_lite.data.conversation import DataError
from llava_lite.train.recipe import Trainer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_pair_data(tmp_path_factory.mktemp("pairs"), n=16, text=4)


def overrides(tiny_lm, data, out, *extra, path=None):
    path = path or data["pairs"]
    src = f"data.sources=[{{path: {path}, format: auto, image_folder: {data['pairs'].parent / 'images'}}}]"
    return base(tiny_lm, out, src, "train.lr=1e-3", "train.projector_lr=1e-3", "train.warmup_ratio=0", *extra)


def setup(tiny_lm, data, out, *extra) -> Trainer:
    t = Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, out, *extra)))
    t.setup()
    return t


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def inputs_of(batch) -> dict:
    return {k: v for k, v in batch.items() if k != "num_skipped"}


@pytest.mark.parametrize("lora", [False, True])
def test_first_step_loss_is_ln2(tiny_lm, data, tmp_path, lora):
    """Model == reference at the start: every h is 0, the loss ln 2 and every reward 0."""
    extra = ["lora.enabled=true", "lora.r=4", "lora.alpha=8"] if lora else []
    Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, tmp_path, "train.max_steps=2", *extra))).run()
    first = rows(tmp_path)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert first[key] == pytest.approx(0.0, abs=1e-6), key
    assert first["pairs"] == 4 and first["logps/chosen"] < 0 and first["logps/rejected"] < 0


def answer_logp(model, ids, labels, pixels) -> tuple[float, int]:
    """One row alone, unpadded, full logits: the summed log-prob of its supervised tokens."""
    n = int((ids != model.tokenizer.pad_token_id).nonzero().max()) + 1
    with torch.no_grad():
        logits = model(input_ids=ids[None, :n], pixel_values=pixels).logits[0].float()
    targets = labels[1:n]
    keep = targets != IGNORE_INDEX
    logp = F.log_softmax(logits[:-1], -1).gather(-1, targets.clamp(min=0)[:, None])[:, 0]
    return float(logp[keep].sum()), int(keep.sum())


@pytest.mark.parametrize("loss, rpo", [("sigmoid", 0.0), ("ipo", 0.0), ("sigmoid", 0.5)])
def test_loss_is_the_hand_computation(tiny_lm, data, tmp_path, loss, rpo):
    beta = 0.3
    t = setup(tiny_lm, data, tmp_path, f"preference.loss={loss}", f"preference.rpo_alpha={rpo}",
              f"preference.beta={beta}")
    model = t.acc.unwrap_model(t.model)
    start = copy.deepcopy(model).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # move the model away from its reference
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    batch = next(b for b in t._epoch_iter(0, 0) if b.get("pixel_values") is not None)
    value, stats = t.objective(t.model, inputs_of(batch))
    ids, labels, pixels = batch["input_ids"], batch["labels"], batch["pixel_values"]
    pairs = ids.shape[0] // 2
    with_image = (ids == model.image_token_id).any(1)
    want, rewards = 0.0, 0.0
    for i in range(pairs):
        k = int(with_image[:i].sum())
        img = pixels[k:k + 1] if with_image[i] else None
        pi_c, n_c = answer_logp(model, ids[i], labels[i], img)
        pi_r, n_r = answer_logp(model, ids[i + pairs], labels[i + pairs], img)
        ref_c, _ = answer_logp(start, ids[i], labels[i], img)
        ref_r, _ = answer_logp(start, ids[i + pairs], labels[i + pairs], img)
        rewards += beta * (pi_c - ref_c)
        if loss == "ipo":
            h = (pi_c - ref_c) / n_c - (pi_r - ref_r) / n_r
            want += (h - 1 / (2 * beta)) ** 2
        else:
            h = (pi_c - ref_c) - (pi_r - ref_r)
            want += math.log1p(math.exp(-beta * h)) + rpo * (-pi_c / n_c)
    assert float(value.detach()) == pytest.approx(want, rel=1e-4)
    if loss == "sigmoid":
        assert float(stats["rewards/chosen"]) == pytest.approx(rewards, rel=1e-4, abs=1e-6)
    assert ("nll" in stats) == (rpo > 0)


def test_pair_image_is_encoded_once_and_the_head_runs_at_answers(tiny_lm, data, tmp_path):
    t = setup(tiny_lm, data, tmp_path)
    model = t.acc.unwrap_model(t.model)
    batch = next(b for b in t._epoch_iter(0, 0) if b.get("pixel_values") is not None)
    encoded, head_rows = [], []
    hooks = [model.vision.register_forward_hook(lambda m, a, o: encoded.append(a[0].shape[0])),
             model.lm.get_output_embeddings().register_forward_hook(lambda m, a, o: head_rows.append(a[0].shape[0]))]
    t.objective(t.model, inputs_of(batch))
    for h in hooks:
        h.remove()
    pairs = batch["input_ids"].shape[0] // 2
    answers = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert encoded == [pairs, pairs]  # once for the model, once for the reference; never per row
    assert head_rows[0] == answers  # [S, V] logits: answer positions of chosen and rejected rows only


def test_preference_runs_are_checked_before_weights_load(tiny_lm, data, tmp_path):
    with pytest.raises(ConfigError, match="packing"):
        Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, tmp_path, "data.packing=true"))).setup()
    with pytest.raises(ConfigError, match="kl_to_base"):
        Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, tmp_path, "train.kl_to_base=0.1"))).setup()
    mixed = tmp_path / "mixed.json"  # conversations are not pairs
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]
    mixed.write_text(json.dumps([{"conversations": turns}]))
    with pytest.raises(DataError, match="not a pair"):
        Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, tmp_path, path=mixed))).setup()


@pytest.mark.slow  # 12 + 2 x 6 training steps
def test_learns_resumes_exactly_and_two_processes_equal_one(tiny_lm, data, tmp_path, monkeypatch):
    steps = ["train.batch_size=2", "train.max_steps=6", "train.save_every=2"]
    one = tmp_path / "one"
    Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, one, *steps, "train.grad_accum=2"))).run()
    kill_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, tmp_path / "b", *steps,
                                                            "train.grad_accum=2"))).run()
    monkeypatch.undo()
    Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, tmp_path / "b", *steps, "train.grad_accum=2")),
            resume=True).run()
    keys = ["loss", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"]
    a, b = rows(one), rows(tmp_path / "b")
    assert len(a) == len(b) == 6
    for key in keys:
        assert [r[key] for r in b] == pytest.approx([r[key] for r in a], rel=1e-5, abs=1e-7), key
    # 2 processes x batch 2 == 1 process x batch 2 x accum 2
    proc = torchrun(2, [str(CONFIGS / "dpo.yaml"), *overrides(tiny_lm, data, tmp_path / "two", *steps)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = rows(tmp_path / "two")
    assert [r["pairs"] for r in two] == [r["pairs"] for r in a]
    for key in keys:
        assert [r[key] for r in two] == pytest.approx([r[key] for r in a], rel=1e-4, abs=1e-6), key
    # it learns: 30 more steps on the 20 pairs and the chosen answers win
    long = tmp_path / "long"
    Trainer(load_config(CONFIGS / "dpo.yaml", overrides(tiny_lm, data, long, "train.batch_size=4",
                                                        "train.max_steps=30"))).run()
    last = rows(long)[-5:]
    assert sum(r["rewards/accuracies"] for r in last) / 5 > 0.8
    assert sum(r["rewards/margins"] for r in last) / 5 > 0.1
    assert last[-1]["loss"] < math.log(2) - 0.1
