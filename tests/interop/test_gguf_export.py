"""`llava-lite export --format gguf`, checked by llama.cpp itself (llama-cpp-python with libmtmd, built from its
sdist by `make install`): same tokens for the same text, the same image features, and the same greedy answers
through llama-cpp-python's own multimodal chat path, with the logits each token was chosen from compared.

The tiny LM is drawn with initializer_range 0.1 (5x transformers' default), so its next-token choices are
decided by margins above f16/q8_0 rounding, as a trained model's are. (Larger weights make a random 2-layer LM
chaotic: at 0.5, bf16 rounding alone moves its logits by 2.5.) SmolLM2 after LoRA stage 2
(tests/interop/test_smollm2_llava.py) and the demo's trained model (tests/demo/test_demo_run.py) are held to
identical answers too.
"""
from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from helpers.llama_cpp import compare, data_uri, image_features, load
from helpers.parity import noise
from helpers.tiny import CORPUS
from transformers import LlamaConfig

from llava_lite.cli import main
from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.data.conversation import Message
from llava_lite.demo.tokenizer import build_tokenizer
from llava_lite.model.llava import LlavaLite
from llava_lite.model.random import random_lm

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
QUESTION = "What colour is it?"
SQUARE = [(32, 32), (64, 64), (96, 96)]  # the tower's size and larger
# Non-square images are padded in another order (llama.cpp resizes then pads; llava-lite pads then resizes, as
# LLaVA-1.5 does): the bicubic kernel mixes the pad colour into the edge rows differently, so the features of
# those rows differ by up to ~0.05 (test_image_features_match keeps to square images).
OBLONG = [(64, 48), (48, 64)]
# Largest |logit difference| allowed per weight type on square images (measured: see the test's print). f32
# differs by llama.cpp's tanh-approximated GELU in the tower and the projector; the rest by weight rounding.
TOL = {"f32": 0.01, "f16": 0.02, "bf16": 0.1, "q8_0": 0.3}


def peaky_model(root, system_prompt: str | None = "Answer in one word.") -> LlavaLite:
    """The demo's tokenizer (digits split, ChatML with generation marks), a 2-layer Llama with wider logits,
    the tiny tower padded to square, mlp2x_gelu; saved to root/model."""
    tok = build_tokenizer(CORPUS, 400)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      initializer_range=0.1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    random_lm(cfg).save_pretrained(root / "lm")
    tok.save_pretrained(root / "lm")
    model = LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None, pad_to_square=True),
                                        lm=str(root / "lm"), system_prompt=system_prompt))
    return LlavaLite.from_pretrained(model.save_pretrained(root / "model")).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    model = peaky_model(root)
    for outtype in OUTTYPES:
        main(["export", str(root / "model"), str(root / outtype), "--format", "gguf", "--outtype", outtype])
    return model, root


@pytest.fixture(scope="module")
def clients(exported):
    _, root = exported
    llms = {t: load(root / t / "model.gguf", root / t / "mmproj-model.gguf") for t in OUTTYPES}
    yield llms
    for llm in llms.values():
        llm.close()


def chat(image):
    ours = [Message("user", "<image>\n" + QUESTION)]
    typed = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(image)}},
                                          {"type": "text", "text": QUESTION}]}]
    return ours, typed


def test_files_and_metadata(exported):
    _, root = exported
    assert sorted(p.name for p in (root / "f16").iterdir()) == ["mmproj-model.gguf", "model.gguf"]
    lm = gguf.GGUFReader(str(root / "f16" / "model.gguf"))
    assert lm.fields["general.architecture"].contents() == "llama"
    assert lm.fields["tokenizer.ggml.pre"].contents() == "smollm"  # the demo tokenizer splits every digit
    template = lm.fields["tokenizer.chat_template"].contents()
    assert "{% generation %}" not in template and "endgeneration" not in template  # transformers-only tags
    assert "<__media__>" in template and "Answer in one word." in template  # libmtmd's marker, the system prompt
    proj = gguf.GGUFReader(str(root / "f16" / "mmproj-model.gguf"))
    assert proj.fields["clip.projector_type"].contents() == "mlp"
    assert list(proj.fields["clip.vision.feature_layer"].contents()) == [1]  # block -2 of 2: one block runs
    kinds = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(root / "q8_0" / "model.gguf")).tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["output_norm.weight"] == "F32"


def test_tokenisation_matches(exported, clients):
    model, _ = exported
    llm = clients["f32"]
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": "Add 12 and 345."}], tokenize=False,
                                                 add_generation_prompt=True)
    for text in ["The answer is 2024.", "  spaces\n\nand\ttabs ", "café – naïve 😀 ünïcode", "x=3.14; y='a'", prompt]:
        ours = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text


def test_image_features_match(exported, clients):
    """libmtmd's encoder + projector against ours, on square images (non-square ones are padded by each
    side in its own order: llama.cpp resizes then pads, llava-lite pads then resizes)."""
    model, _ = exported
    worst = 0.0
    for seed, size in enumerate([(32, 32), (64, 64), (96, 96)]):
        image = noise(*size, seed)
        with torch.no_grad():
            ours = model.encode_images(model.vision.image_to_tensor(image)[None]).numpy()
        theirs = image_features(clients["f32"], image)
        assert theirs.shape == ours.shape
        worst = max(worst, float(np.abs(theirs - ours).max()))
    print(f"\nmmproj f32: max |image feature diff| {worst:.2e} (features up to {np.abs(ours).max():.2f})")
    assert worst < 2e-3  # measured 5e-4: llama.cpp's tanh GELU against the tower's exact one


@pytest.mark.parametrize("outtype", OUTTYPES)
def test_answers_match(exported, clients, outtype):
    model, _ = exported
    square = [compare(model, clients[outtype], *chat(noise(*size, seed)), [noise(*size, seed)])
              for seed, size in enumerate(SQUARE)]
    oblong = [compare(model, clients[outtype], *chat(noise(*size, seed)), [noise(*size, seed)])
              for seed, size in enumerate(OBLONG)]
    worst = max(d for _, d in square)
    print(f"\n{outtype}: square images {sum(s for s, _ in square)}/{len(square)} identical greedy answers, max |logit "
          f"diff| {worst:.3f}; non-square {sum(s for s, _ in oblong)}/{len(oblong)}, {max(d for _, d in oblong):.3f}")
    assert all(same for same, _ in square + oblong)
    assert worst < TOL[outtype] and max(d for _, d in oblong) < 0.3


def test_text_only_export(tiny_lm, tmp_path):
    """`--text-only` writes the LM alone; a plain byte-level tokenizer maps to llama.cpp's gpt-2 pre-tokenizer."""
    torch.manual_seed(0)
    LlavaLite.build(ModelConfig(vision=VisionConfig(model="tiny", pretrained=None), lm=str(tiny_lm))).save_pretrained(
        tmp_path / "text")
    main(["export", str(tmp_path / "text"), str(tmp_path / "out"), "--format", "gguf", "--outtype", "f32",
          "--text-only"])
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["text.gguf"]
    model = LlavaLite.from_pretrained(tmp_path / "text").eval()
    llm = load(tmp_path / "out" / "text.gguf")
    try:
        assert gguf.GGUFReader(str(tmp_path / "out" / "text.gguf")).fields["tokenizer.ggml.pre"].contents() == "gpt-2"
        messages = [Message("user", "Reverse the word 'cat'.")]
        same, worst = compare(model, llm, messages, [{"role": "user", "content": "Reverse the word 'cat'."}],
                              max_tokens=6)
        assert same and worst < 1e-3, worst  # the tiny LM at its usual scale: f32 text-only is exact to rounding
    finally:
        llm.close()


def test_llama_cpp_server_answers_like_chat(exported):
    """llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`, libmtmd chat handler) on
    loopback with the exported pair, asked one image question through the `openai` client: llava-lite chat's answer."""
    import socket
    import subprocess
    import sys
    import time

    import openai

    from llava_lite.infer.chat import Assistant

    model, root = exported
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(root / "f16" / "model.gguf"), "--clip_model_path",
         str(root / "f16" / "mmproj-model.gguf"), "--chat_format", "mtmd", "--host", "127.0.0.1", "--port", str(port),
         "--n_ctx", "1024", "--n_threads", "2", "--verbose", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                client.models.list()
                break
            except openai.APIConnectionError:
                assert time.monotonic() < deadline, "llama_cpp.server did not start"
                time.sleep(0.2)
        image = noise(32, 32, 11)
        ours, typed = chat(image)
        reply = client.chat.completions.create(model="model", messages=typed, max_tokens=8, temperature=0.0,
                                               extra_body={"top_k": 1, "repeat_penalty": 1.0})
        expected = Assistant(model).reply(ours, [image], max_new_tokens=8)
        # a random LM emits byte tokens that form no UTF-8: transformers decodes them to U+FFFD, llama.cpp drops them
        assert reply.choices[0].message.content == expected.text.replace("\ufffd", "")
        assert reply.usage.completion_tokens == expected.completion_tokens
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_siglip_tower_through_llama_cpp(tiny_lm, tmp_path):
    """A SigLIP tower (no CLS token, biased patch convolution, tanh GELU) exports to the same llava graph: llama.cpp's
    image features and greedy answers match ours."""
    from helpers.siglip import tiny_siglip_dir

    from llava_lite.interop.export import write_gguf

    torch.manual_seed(0)
    vision = VisionConfig(model=tiny_siglip_dir(tmp_path / "tower"), pretrained=None, pad_to_square=True)
    model = LlavaLite.build(ModelConfig(vision=vision, lm=str(tiny_lm))).eval()
    lm_file, mmproj = write_gguf(model, tmp_path / "out", "f32")
    llm = load(lm_file, mmproj)
    try:
        worst, same = 0.0, True
        for seed, size in enumerate(SQUARE):
            image = noise(*size, seed)
            with torch.no_grad():
                ours = model.encode_images(model.vision.image_to_tensor(image)[None]).numpy()
            worst = max(worst, float(np.abs(image_features(llm, image) - ours).max()))
            same &= compare(model, llm, *chat(image), [image])[0]
    finally:
        llm.close()
    print(f"\nSigLIP mmproj f32: max |image feature diff| {worst:.2e}; identical answers: {same}")
    assert worst < 1e-3 and same
