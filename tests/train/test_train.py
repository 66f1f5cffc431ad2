"""End-to-end training on tiny models: stages, resume, token-weighted accumulation, bad data."""
from __future__ import annotations

import collections
import io
import json
import math
from pathlib import Path

import pytest
import torch
from helpers.runs import CONFIGS, base, kill_at, losses, source

from data_tools.shards import write_shards
from llava_lite.cli import main
from llava_lite.config import ConfigError, load_config
from llava_lite.data.conversation import DataError
from llava_lite.data.mixture import length_score, load_mixture
from llava_lite.model.vision import VisionTower
from llava_lite.train.recipe import Trainer


def two_sources(data, conv_weight, text_weight):
    """The conversations (images + text-only) and the Alpaca file, weighted."""
    images = Path(data["conversations"]).parent / "images"
    return (f"data.sources=[{{path: {data['conversations']}, image_folder: {images}, weight: {conv_weight}}}, "
            f"{{path: {data['alpaca']}, format: alpaca, weight: {text_weight}, name: replay}}]")


@pytest.mark.slow  # three 12-step training runs and chat
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
                                                         f"model.init_from={s2}", "train.max_steps=12",
                                                         "train.lr=3e-3")])
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


@pytest.mark.slow  # a 10-step training run
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


@pytest.mark.slow  # a 12-step and a 2-step training run
def test_bfloat16_trains_under_cpu_autocast(tiny_lm, data, tmp_path, monkeypatch):
    """model.dtype=bfloat16 on a CPU: frozen weights stay bf16, trainable ones are fp32 masters, the
    forward runs under bf16 autocast, and the loss goes down."""
    seen = []
    real_forward = torch.nn.Linear.forward
    monkeypatch.setattr(torch.nn.Linear, "forward",
                        lambda self, x: seen.append(torch.is_autocast_enabled("cpu")) or real_forward(self, x))
    t = Trainer(load_config(CONFIGS / "stage2.yaml", base(tiny_lm, tmp_path / "bf16", source(data["conversations"]),
                                                          "model.dtype=bfloat16", "train.max_steps=12",
                                                          "train.lr=3e-3")))
    t.run()
    assert seen and all(seen)
    model = t.acc.unwrap_model(t.model)
    assert {p.dtype for p in model.vision.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    curve = losses(tmp_path / "bf16")
    assert all(math.isfinite(x) for x in curve) and sum(curve[-3:]) < sum(curve[:3]), curve
    seen.clear()  # a float32 run in the same process, as after a bf16 demo stage: no autocast
    Trainer(load_config(CONFIGS / "stage2.yaml", base(tiny_lm, tmp_path / "fp32", source(data["conversations"]),
                                                      "train.max_steps=2"))).run()
    assert seen and not any(seen)


def test_bfloat16_on_a_cpu_without_native_bf16_says_so(tiny_lm, data, tmp_path, monkeypatch, caplog):
    """Emulated bf16 is about 20x slower than float32 (an AVX2-only CPU): one warning naming the fix."""
    import llava_lite.train.recipe as recipe

    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(recipe, "cpu_bf16_native", lambda native=native: native)
        caplog.clear()
        Trainer(load_config(CONFIGS / "stage2.yaml", base(tiny_lm, tmp_path, source(data["conversations"]),
                                                          "model.dtype=bfloat16")))
        assert ("set model.dtype=float32" in caplog.text) == warned


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


@pytest.mark.slow  # 2.5 epochs of training, killed and resumed
def test_fractional_weights_redraw_each_epoch_and_resume_exactly(tiny_lm, data, tmp_path, monkeypatch):
    """Weights 0.5 / [0, 0.25] draw a different subset every epoch (so even the number of image
    batches varies), the replay source only from epoch 1 on (a schedule); 2.5 epochs of steps are
    counted from the mixed epochs; killed inside epoch 1 and resumed == never interrupted."""
    args = ["train.epochs=2.5", "train.save_every=4", "train.lr=3e-3"]
    cfg = lambda out: load_config(CONFIGS / "stage2.yaml", base(tiny_lm, out, two_sources(data, 0.5, [0, 0.25]),
                                                                 *args))
    rows = collections.defaultdict(list)  # epoch -> the unpadded token ids of every sample trained on
    real_step = Trainer._step

    def recording_step(self, window):
        for b in window:
            rows[self.state["epoch"]] += [tuple(i[m.bool()].tolist()) for i,
                                          m in zip(b["input_ids"], b["attention_mask"])]
        return real_step(self, window)

    monkeypatch.setattr(Trainer, "_step", recording_step)
    a = Trainer(cfg(tmp_path / "a"))
    a.run()
    monkeypatch.undo()
    mix = load_mixture(cfg(tmp_path / "a").data.sources, seed=0)
    assert mix.sizes == [36, 24] and mix.counts_at(0) == [18, 0]  # round(36 * 0.5); the replay comes in later
    assert mix.counts_at(1) == mix.counts_at(2) == [18, 6]  # round(24 * 0.25), the last weight holding on

    def steps(epoch):
        idx = mix.epoch(epoch)
        n_image = sum(bool(mix.conversations[i].images) for i in idx)
        return math.ceil(n_image / 4) + math.ceil((len(idx) - n_image) / 4)

    assert a.total_steps == steps(0) + steps(1) + math.ceil(steps(2) / 2) == len(losses(tmp_path / "a"))
    assert len(rows[0]) == 18 and len(rows[1]) == 24  # the replay source from epoch 1 on
    assert len([r for r in rows[1] if r not in rows[0]]) > 6  # the 6 replay records and a fresh draw of the rest

    kill_at(monkeypatch, 10)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "b")).run()
    monkeypatch.undo()
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-0000008" / "trainer_state.json").read_text())
    assert state["epoch"] == 1 and state["batches_in_epoch"] > 0  # resumes inside the second epoch
    Trainer(cfg(tmp_path / "b"), resume=True).run()
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)


def test_curriculum_orders_each_epoch_easy_to_hard(tiny_lm, data, tmp_path):
    cfg = load_config(CONFIGS / "stage2.yaml", base(tiny_lm, tmp_path / "o", two_sources(data, 1.0, 0.5),
                                                      "data.curriculum=length"))
    tr = Trainer(cfg)
    tr.setup()
    convs = load_mixture(cfg.data.sources, seed=0).conversations
    epochs = []
    for epoch in (0, 1):
        tr.data.sampler.set_epoch(epoch)
        batches = list(tr.data.sampler)
        assert len(batches) == len(tr.data.sampler) and sum(map(len, batches)) == 36 + 12
        assert all(len({bool(convs[i].images) for i in b}) == 1 for b in batches)  # still one modality per batch
        for modality in (True, False):
            scores = [length_score(convs[i]) for b in batches for i in b if bool(convs[i].images) == modality]
            assert scores == sorted(scores)  # easy to hard, batch after batch
        epochs.append(sorted(i for b in batches for i in b))
    assert epochs[0] != epochs[1]  # the half of the Alpaca source is drawn afresh


@pytest.mark.slow  # 12-step training runs from shards, killed and resumed
def test_train_from_shards_and_resume(tiny_lm, data, tmp_path, monkeypatch):
    """`llava-lite train` streams webdataset shards; killed and resumed == never interrupted."""
    images = Path(data["conversations"]).parent / "images"
    write_shards(data["conversations"], tmp_path / "shards", images, maxcount=5)  # 36 records -> 8 shards
    source = f"data.sources=[{{shards: '{tmp_path}/shards/shard-{{000000..000007}}.tar'}}]"
    args = ["train.max_steps=12", "train.save_every=5", "train.lr=3e-3", "data.shuffle_buffer=8",
            f"data.eval_sources=[{{path: {data['alpaca']}, format: alpaca}}]", "train.eval_every=6"]
    main(["train", str(CONFIGS / "stage2.yaml"), *base(tiny_lm, tmp_path / "a", source, *args)])
    rows = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and [r["epoch"] for r in rows] == [0] * 9 + [1] * 3  # 36 samples / 4 per batch
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]  # eval sources are files, every record once
    assert [r["step"] for r in rows if "eval_loss" in r] == [6, 12] and evals[1] < evals[0]
    assert (tmp_path / "a" / "llava_lite.json").is_file()
    kill_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        main(["train", str(CONFIGS / "stage2.yaml"), *base(tiny_lm, tmp_path / "b", source, *args)])
    monkeypatch.undo()
    main(["train", str(CONFIGS / "stage2.yaml"), *base(tiny_lm, tmp_path / "b", source, *args), "--resume"])
    assert losses(tmp_path / "b") == pytest.approx(losses(tmp_path / "a"), rel=1e-5)


@pytest.mark.parametrize("sources, extra, message", [
    ("[{path: a.json, shards: a.tar}]", [], r"data.sources\[0\] needs exactly one of 'path'"),
    ("[{}]", [], r"data.sources\[0\] needs exactly one of 'path'"),
    ("[]", [], r"data.sources is empty"),
    ("[{shards: a.tar, weight: 0.5}]", [], r"data.sources\[0\].weight=0.5: shard sources .* cannot be weighted"),
    ("[{path: a.json}, {shards: a.tar}]", [], r"mixes conversation files and shard streams"),
    ("[{shards: a.tar}]", ["data.curriculum=length"], r"data.curriculum='length' .* shard streams cannot use it"),
    ("[{path: a.json, weight: -1}]", [], r"data.sources\[0\].weight must be a finite number >= 0"),
    ("[{path: a.json, weight: [1, -1]}]", [], r"data.sources\[0\].weight must be .* or a list of them"),
    ("[{path: a.json, weight: []}]", [], r"data.sources\[0\].weight must be .* \(one per epoch\), got \[\]"),
    ("[{path: a.json}]", ["data.eval_sources=[{shards: b.tar}]"], r"data.eval_sources must be conversation files"),
])
def test_bad_data_configs_are_named(tmp_path, sources, extra, message):
    cfg = load_config(CONFIGS / "stage2.yaml", [f"data.sources={sources}", f"train.output_dir={tmp_path}", *extra])
    with pytest.raises(ConfigError, match=message):
        Trainer(cfg).setup()
