"""`--model` takes a llava-hf directory made by transformers itself (chat, eval, serve): imported once into the
cache, then answering as transformers' own `generate` does on the same inputs."""
from __future__ import annotations

import json

import openai
import pytest
from helpers.hf_llava import make_hf_llava
from helpers.parity import noise
from helpers.server import LiveServer

from llava_lite.cli import main
from llava_lite.interop.sources import model_dir

QUESTION = "What colour is it?"


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def hf_dir(tmp_path_factory, request):
    """A llava-hf Llava (padding to square) or LLaVA-NeXT (AnyRes tiles) directory."""
    out = tmp_path_factory.mktemp(request.param)
    make_hf_llava(out, "quick_gelu", -2, "default", pad=True, next_=request.param == "llava_next")
    return out


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_LITE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def transformers_answer(hf_dir, image, new_tokens: int = 6) -> str:
    """transformers' own model class (Llava or LlavaNext) .generate, greedy, on the processor's own rendering."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(hf_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(hf_dir, backend="pil")
    text = processor.apply_chat_template([{"role": "user", "content": "<image>\n" + QUESTION}],
                                         add_generation_prompt=True)
    inputs = processor(images=[image], text=text, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    stops = {processor.tokenizer.eos_token_id, processor.tokenizer.convert_tokens_to_ids("<|im_end|>")}
    kept = []
    for t in out.tolist():
        if t in stops:
            break
        kept.append(t)
    return processor.decode(kept, skip_special_tokens=True)


def test_chat_imports_once_and_answers_like_transformers(hf_dir, cache, tmp_path, capsys):
    image = noise(40, 30, 3)
    image.save(tmp_path / "x.png")
    args = ["chat", "--model", str(hf_dir), "--image", str(tmp_path / "x.png"), "--prompt", QUESTION,
            "--max-new-tokens", "6", "--device", "cpu"]
    main(args)
    assert capsys.readouterr().out.strip() == transformers_answer(hf_dir, image).strip()
    [imported] = (cache / "imported").iterdir()
    stamp = (imported / "llava_lite.json").stat().st_mtime_ns
    assert model_dir(hf_dir) == imported and (imported / "llava_lite.json").stat().st_mtime_ns == stamp  # reused


def test_eval_takes_the_directory(hf_dir, cache, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(3):
        noise(24 + 20 * i, 32, i).save(images / f"{i}.png")  # three aspect ratios
        rows.append({"question_id": i, "image": f"{i}.png", "text": QUESTION, "answer": "red"})
    (tmp_path / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    main(["eval", "--model", str(hf_dir), "--vqa", str(tmp_path / "vqa.jsonl"), "--image-folder", str(images),
          "--out", str(tmp_path / "eval"), "--max-new-tokens", "6", "--no-suffix", "--device", "cpu"])
    answers = [json.loads(line) for line in next((tmp_path / "eval").glob("*answers*.jsonl")).read_text().splitlines()]
    assert [a["text"].strip() for a in answers] == [
        transformers_answer(hf_dir, noise(24 + 20 * i, 32, i)).strip() for i in range(3)]


def test_serve_takes_the_directory(hf_dir, cache):
    from helpers.llama_cpp import data_uri

    from llava_lite.serve.app import create_app

    image = noise(32, 32, 9)
    with LiveServer(create_app(hf_dir)) as live:
        client = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="m", max_tokens=6, temperature=0.0, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(image)}},
                                         {"type": "text", "text": QUESTION}]}])
    assert reply.choices[0].message.content.strip() == transformers_answer(hf_dir, image).strip()


def test_a_directory_of_no_known_layout_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["chat", "--model", str(tmp_path / "empty"), "--prompt", "hi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --model") and "llava-hf" in err[0], err
