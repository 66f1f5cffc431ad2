"""llama.cpp itself (llama-cpp-python, built from its sdist with libmtmd) as the reference client for the GGUF
export: load the pair with the generic multimodal chat handler, ask greedily, and hold the answer to
llava-lite's own, token for token, with every step's logits compared.

`answer(llm, messages)` runs llama-cpp-python's own chat path (the GGUF's chat template, libmtmd's image
preprocessing and encoder) and captures, through a logits processor, the logits each token was chosen from.
"""
from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import os
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from llava_lite.data.conversation import Message
from llava_lite.infer.chat import Assistant
from llava_lite.infer.decode import generate


def require_llama_cpp():
    if importlib.util.find_spec("llama_cpp") is None:
        why = "llama-cpp-python is missing: make install builds it (scripts/install_llama_cpp.sh)"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    import llama_cpp

    return llama_cpp


def data_uri(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def load(lm_path, mmproj_path=None, n_ctx: int = 1024):
    llama_cpp = require_llama_cpp()
    from llama_cpp.llama_chat_format import MTMDChatHandler

    handler = MTMDChatHandler(clip_model_path=str(mmproj_path), verbose=False) if mmproj_path else None
    # The KV cache in f32 (llama.cpp's default is f16, which alone moves SmolLM2's logits by ~0.02), so the
    # differences measured are the export's and the kernels', not the cache's.
    f32 = llama_cpp.GGML_TYPE_F32
    with cpu_kernels_only(llama_cpp):
        return llama_cpp.Llama(model_path=str(lm_path), chat_handler=handler, n_ctx=n_ctx, n_threads=2,
                               verbose=False, logits_all=True, seed=0, type_k=f32, type_v=f32)


@contextlib.contextmanager
def cpu_kernels_only(llama_cpp):
    """On CPUs with AMX (AMX_INT8: Sapphire Rapids and later) llama.cpp moves quantized weights into its AMX
    buffers, whose matmul segfaults on the first decode of our q8_0 files (measured on a 2-core Xeon; llama.cpp
    #20824, open, the same crash on other models). There the model loads as `llama-cli --no-repack` loads it: no
    extra buffer types, the CPU's own kernels. Elsewhere nothing changes. Llama() does not take the setting, so
    the default model params it starts from are patched while it loads."""
    if "AMX_INT8 = 1" not in llama_cpp.llama_print_system_info().decode():
        yield
        return
    module = llama_cpp.llama_cpp  # what llama_cpp.Llama calls for its model params
    default = module.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        module.llama_model_default_params = default


@dataclass
class Answer:
    ids: list[int]  # the greedy tokens, the stop token excluded
    logits: list[np.ndarray]  # [V] per generated token (and one more when a stop token ended it)
    prompt: list[int]  # llama.cpp's context when the first token was chosen (image positions hold 0s)


def answer(llm, messages: list[dict], max_tokens: int = 8) -> Answer:
    """Greedy chat completion through llama-cpp-python's chat path; images as data-URI image_url parts."""
    steps: list[tuple[np.ndarray, np.ndarray]] = []

    def capture(input_ids, scores):
        steps.append((np.array(input_ids), np.array(scores, dtype=np.float32)))
        return scores

    llm.create_chat_completion(messages=messages, temperature=0.0, top_k=1, repeat_penalty=1.0, max_tokens=max_tokens,
                               logits_processor=[capture])
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    stops = {t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    ids: list[int] = []
    for _, scores in steps[:max_tokens]:  # the processor may be asked once more after the last token
        if int(scores.argmax()) in stops:
            break
        ids.append(int(scores.argmax()))
    return Answer(ids, [s for _, s in steps[:len(ids) + 1]], steps[0][0].tolist() if steps else [])


def ours(model, messages: list[Message], images, max_tokens: int = 8) -> tuple[list[int], list[int], torch.Tensor]:
    """llava-lite's prompt ids, greedy ids and, teacher-forced, the logits each token was chosen from [n, V]."""
    ids, pixels, _ = Assistant(model).encode(messages, list(images))
    new = generate(model, [ids[0].tolist()], pixels, max_new_tokens=max_tokens)[0]
    full = torch.tensor([ids[0].tolist() + new])
    with torch.no_grad():
        logits = model(full, torch.ones_like(full), pixels).logits[0, ids.shape[1] - 1:].float()
    return ids[0].tolist(), new, logits


def compare(model, llm, messages: list[Message], typed: list[dict], images=(),
            max_tokens: int = 8) -> tuple[bool, float]:
    """Ask both; the prompts must hold the same tokens (image positions aside). Returns whether the greedy answers
    are identical, and the largest logit difference over the steps both took from the same prefix (up to and
    including the first step where they chose differently: after it, the prefixes differ)."""
    prompt, new, logits = ours(model, messages, images, max_tokens)
    theirs = answer(llm, typed, max_tokens)
    image_id = model.image_token_id
    assert len(theirs.prompt) == len(prompt), (len(theirs.prompt), len(prompt))
    assert all(a == b for a, b in zip(prompt, theirs.prompt) if a != image_id), "prompt tokens differ"
    diverged = next((i for i, (a, b) in enumerate(zip(new, theirs.ids)) if a != b), min(len(new), len(theirs.ids)))
    steps = min(diverged + 1, len(theirs.logits), logits.shape[0])
    worst = max(float(np.abs(theirs.logits[i] - logits[i].numpy()).max()) for i in range(steps))
    return theirs.ids == new, worst


def image_features(llm, image) -> np.ndarray:
    """libmtmd's encoder output for one image: the projected image embeddings [n_tokens, hidden]."""
    import ctypes

    import llama_cpp.mtmd_cpp as mtmd

    handler = llm.chat_handler
    handler._init_mtmd_context(llm)
    ctx = handler.mtmd_ctx
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    bitmap = handler._create_bitmap_from_bytes(buf.getvalue())
    chunks = mtmd.mtmd_input_chunks_init()
    try:
        marker = mtmd.mtmd_default_marker()
        text = mtmd.mtmd_input_text()
        text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
        assert mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1) == 0
        chunk = next(mtmd.mtmd_input_chunks_get(chunks, i) for i in range(mtmd.mtmd_input_chunks_size(chunks))
                     if mtmd.mtmd_input_chunk_get_type(mtmd.mtmd_input_chunks_get(chunks, i))
                     == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE)
        n = mtmd.mtmd_input_chunk_get_n_tokens(chunk)
        assert mtmd.mtmd_encode_chunk(ctx, chunk) == 0
        embd = mtmd.mtmd_get_output_embd(ctx)
        return np.ctypeslib.as_array(embd, shape=(n * llm.n_embd(),)).reshape(n, llm.n_embd()).copy()
    finally:
        mtmd.mtmd_input_chunks_free(chunks)
        mtmd.mtmd_bitmap_free(bitmap)


def demo_agreement(demo, n: int) -> dict:
    """The demo's f16 pair (stage2-gguf/, written by `llava-lite demo`) against its stage-2 model (fp32) on the first
    `n` held-out VQA questions: identical greedy answers, each side's accuracy, the largest first-token logit gap."""
    import json

    from PIL import Image

    from llava_lite.eval.scorers import vqa_score
    from llava_lite.model.llava import LlavaLite

    pair = demo / "stage2-gguf"
    model = LlavaLite.from_pretrained(demo / "stage2", dtype="float32").eval()
    questions = [json.loads(line) for line in (demo / "data" / "vqa_test.jsonl").read_text().splitlines()[:n]]
    llm = load(pair / "stage2.gguf", pair / "mmproj-stage2.gguf")
    same, acc_ours, acc_theirs, worst = 0, 0.0, 0.0, 0.0
    try:
        for q in questions:
            image = Image.open(demo / "world" / "images" / q["image"]).convert("RGB")
            _, mine, logits = ours(model, [Message("user", "<image>\n" + q["text"])], [image], max_tokens=4)
            theirs = answer(llm, [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": data_uri(image)}}, {"type": "text", "text": q["text"]}]}],
                max_tokens=4)
            same += theirs.ids == mine
            acc_ours += vqa_score(model.tokenizer.decode(mine, skip_special_tokens=True), q["answer"]) / n
            acc_theirs += vqa_score(model.tokenizer.decode(theirs.ids, skip_special_tokens=True), q["answer"]) / n
            worst = max(worst, float(np.abs(theirs.logits[0] - logits[0].numpy()).max()))
    finally:
        llm.close()
    print(f"\ndemo stage 2 through llama.cpp (f16 GGUF): {same}/{n} greedy answers identical; VQA {acc_theirs:.1%} "
          f"(llava-lite {acc_ours:.1%}); first-token max |logit diff| {worst:.3f}")
    return {"same": same, "n": n, "ours": acc_ours, "theirs": acc_theirs, "worst": worst}
