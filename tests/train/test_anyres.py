"""Training with AnyRes (model.vision.anyres): every image renders its own token count, read from its size;
padded, packed and preference batches give what each sample gives alone; a killed packed run resumes exactly."""
from __future__ import annotations

import pytest
import torch
from helpers.runs import CONFIGS, base, kill_at, losses, source
from helpers.tiny import make_pair_data

from llava_lite.config import load_config
from llava_lite.data.dataset import Collator
from llava_lite.data.loader import dataset_for
from llava_lite.data.packing import PackingCollator
from llava_lite.data.readers import read_conversations
from llava_lite.train.recipe import Trainer

ANYRES = ["model.vision.anyres.max_tiles=4", "data.max_length=256"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """24-39 px images: with a 32 px tower they take 1, 2 or 4 tiles."""
    return make_pair_data(tmp_path_factory.mktemp("anyres"), n=16, text=4)


def trainer(tiny_lm, out, config, path, *extra) -> Trainer:
    t = Trainer(load_config(CONFIGS / config, base(tiny_lm, out, source(path), *ANYRES, *extra)))
    t.setup()
    return t


def alone(model, sample) -> torch.Tensor:
    """One sample's summed loss, run by itself."""
    batch = Collator(model.tokenizer.pad_token_id)([sample])
    return model(**{k: v for k, v in batch.items() if k != "num_skipped"}).loss_sum


def test_samples_take_their_images_tokens_and_batches_equal_samples_alone(tiny_lm, data, tmp_path):
    t = trainer(tiny_lm, tmp_path, "stage2.yaml", data["conversations"])
    model = t.acc.unwrap_model(t.model).eval()
    convs = read_conversations(data["conversations"], "auto", data["conversations"].parent / "images")
    ds = dataset_for(model, convs, 256, "chat", model.cfg.system_prompt)
    samples = [ds[i] for i in range(len(ds)) if ds[i].pixel_values is not None][:6]
    tiles = set()
    for s in samples:
        [size] = s.image_sizes.tolist()
        assert int((s.input_ids == model.image_token_id).sum()) == model.image_tokens(size)
        assert len(s.pixel_values) == model.vision.anyres.num_tiles(size)
        tiles.add(len(s.pixel_values))
    assert len(tiles) > 1  # images of several shapes, so tiles and token counts differ across the batch
    with torch.no_grad():
        want = sum(alone(model, s) for s in samples)
        for collate in (Collator(model.tokenizer.pad_token_id), PackingCollator(model.tokenizer.pad_token_id, 512)):
            batch = collate(samples)
            assert batch["image_sizes"].shape == (len(samples), 2)
            got = model(**{k: v for k, v in batch.items() if k != "num_skipped"}).loss_sum
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_pairs_place_each_images_tokens_in_both_rows(tiny_lm, data, tmp_path):
    """Preference batches: 2B rows over B images of different tile counts (image_rows); each row's loss is the
    row's alone, with its own image."""
    t = trainer(tiny_lm, tmp_path, "dpo.yaml", data["pairs"])
    model = t.acc.unwrap_model(t.model).eval()
    batch = next(b for b in t._epoch_iter(0, 0) if b.get("image_sizes") is not None)
    inputs = {k: v for k, v in batch.items() if k != "num_skipped"}
    with torch.no_grad():
        nll = model(**inputs).token_nll
        rows = (inputs["labels"][:, 1:] != -100).sum(1).tolist()
        per_row = [float(x.sum()) for x in nll.split(rows)]
        with_image = (inputs["input_ids"] == model.image_token_id).any(1).tolist()
        sizes, pairs = inputs["image_sizes"].tolist(), len(rows) // 2
        tiles = [model.vision.anyres.num_tiles(s) for s in sizes]
        image_of = {}  # chosen row r and its rejected row r + pairs read the same image
        for r in (r for r in range(pairs) if with_image[r]):
            image_of[r] = image_of[r + pairs] = len(image_of) // 2
        for i in range(len(rows)):
            ids, labels = inputs["input_ids"][i:i + 1], inputs["labels"][i:i + 1]
            n = int((ids != model.tokenizer.pad_token_id).sum())
            kw = {}
            if i in image_of:
                j = image_of[i]
                start = sum(tiles[:j])
                kw = {"pixel_values": inputs["pixel_values"][start:start + tiles[j]],
                      "image_sizes": torch.tensor([sizes[j]])}
            out = model(ids[:, :n], labels=labels[:, :n], **kw)
            assert float(out.loss_sum) == pytest.approx(per_row[i], rel=1e-5, abs=1e-5)


@pytest.mark.slow  # 2 x 6 + 3 packed steps
def test_packed_anyres_run_learns_and_resumes_exactly(tiny_lm, data, tmp_path, monkeypatch):
    args = ["data.packing=true", "train.max_steps=6", "train.save_every=2", "train.lr=3e-3"]
    cfg = lambda out: load_config(CONFIGS / "stage2.yaml", base(tiny_lm, out, source(data["conversations"]),
                                                                *ANYRES, *args))
    Trainer(cfg(tmp_path / "a")).run()
    kill_at(monkeypatch, 5)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg(tmp_path / "b")).run()
    monkeypatch.undo()
    Trainer(cfg(tmp_path / "b"), resume=True).run()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == 6 and a == pytest.approx(b, rel=1e-5)
    assert a[-1] < a[0]


def test_anyres_turns_on_over_a_model_trained_without_it(tiny_lm, data, tmp_path):
    """As LLaVA-NeXT starts from LLaVA-1.5: init_from a base-resolution model with vision.anyres set keeps its
    tower and projector, adds a new image_newline, and trains and saves an AnyRes model."""
    from llava_lite.model.llava import LlavaLite

    first = tmp_path / "base"
    Trainer(load_config(CONFIGS / "stage2.yaml", base(tiny_lm, first, source(data["conversations"]),
                                                       "train.max_steps=1"))).run()
    t = trainer(tiny_lm, tmp_path / "next", "stage2.yaml", data["conversations"], f"model.init_from={first}",
                "train.max_steps=2")
    start = LlavaLite.from_pretrained(first).projector.state_dict()
    model = t.acc.unwrap_model(t.model)
    assert {k: torch.equal(v, start[k.removeprefix("proj.")]) for k, v in model.projector.state_dict().items()
            if k != "image_newline"} == {"proj." + k: True for k in start}
    t.run()
    saved = LlavaLite.from_pretrained(tmp_path / "next")
    assert saved.cfg.vision.anyres.max_tiles == 4
    assert saved.projector.image_newline.shape == (model.lm.config.hidden_size,)


def test_an_unreadable_image_is_a_reject_before_rendering(tiny_lm, data, tmp_path):
    """AnyRes reads each image's size before it renders: a file that is not an image costs its record only."""
    import json

    t = trainer(tiny_lm, tmp_path, "stage2.yaml", data["conversations"])
    model = t.acc.unwrap_model(t.model)
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "bad.png").write_bytes(b"not a png")
    records = [{"id": "bad", "image": "bad.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}]
    (tmp_path / "bad.json").write_text(json.dumps(records))
    ds = dataset_for(model, read_conversations(tmp_path / "bad.json", "auto", folder), 256, "chat", None)
    sample = ds[0]
    assert sample.skipped and sample.reject.reason == "unreadable image" and sample.reject.id == "bad"
