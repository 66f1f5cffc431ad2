"""Builders for the hf-llava parity checks: tiny models, noise images, chats in both message forms, and
`hf_parity`, which holds an exported directory to llava-lite's own ids, pixels, logits and greedy tokens."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from llava_lite.config import ModelConfig, VisionConfig
from llava_lite.data.conversation import Message
from llava_lite.infer.chat import Assistant
from llava_lite.model.llava import LlavaLite

TOL = 1e-4


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def build(lm, seed: int = 0, projector: str = "mlp2x_gelu", model: str = "tiny", **vision) -> LlavaLite:
    torch.manual_seed(seed)
    cfg = ModelConfig(vision=VisionConfig(model=model, pretrained=None, **vision), lm=str(lm), projector=projector)
    return LlavaLite.build(cfg).eval()


def hf_parity(model: LlavaLite, out, chats, backend: str | None = "pil", new_tokens: int = 6,
              tol: float = TOL) -> float:
    """Exported dir vs llava-lite on each (typed messages, llava-lite messages, images): same ids and pixels,
    logits within `tol`, same greedy tokens. Returns the largest logit difference."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    # fp32 whatever the directory's dtype (a bf16 model's config says bfloat16): the comparison is in fp32
    cls = LlavaForConditionalGeneration if model.vision.anyres is None else LlavaNextForConditionalGeneration
    hf, info = cls.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    processor = AutoProcessor.from_pretrained(out, **({"backend": backend} if backend else {}))
    assistant, worst = Assistant(model), 0.0
    for typed, ours, images in chats:
        text = processor.apply_chat_template(typed, add_generation_prompt=True)
        inputs = processor(images=images or None, text=text, return_tensors="pt")
        ids, pixels, sizes = assistant.encode(ours, images)
        assert inputs["input_ids"].tolist() == ids.tolist()
        with torch.no_grad():
            theirs = hf(**inputs).logits
            mine = model(ids, torch.ones_like(ids), pixels, image_sizes=sizes).logits
        if images:
            given = inputs["pixel_values"]
            if sizes is not None:  # LLaVA-NeXT pads every image's tiles to the most tiles in the batch
                assert inputs["image_sizes"].tolist() == sizes.tolist()
                given = torch.cat([given[i, :model.vision.anyres.num_tiles(s)] for i, s in enumerate(sizes.tolist())])
            torch.testing.assert_close(given, pixels, atol=1e-6, rtol=0)
        worst = max(worst, float((theirs - mine).abs().max()))
        assert worst < tol
        gen = hf.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)[0, ids.shape[1]:].tolist()
        gen = [t for t in gen if t not in model.stop_token_ids()]
        reply = assistant.reply(ours, images, max_new_tokens=new_tokens, temperature=0.0)
        assert processor.decode(gen, skip_special_tokens=True) == reply.text and len(gen) == reply.completion_tokens
    return worst


def one_image_chat(image):
    typed = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    return typed, [Message("user", "<image>\nWhat colour is it?")], [image]


def two_turn_chat(a, b):
    typed = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Same?"}]},
             {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
             {"role": "user", "content": "Why?"}]
    ours = [Message("user", "<image>\n<image>\nSame?"), Message("assistant", "No."), Message("user", "Why?")]
    return typed, ours, [a, b]


TEXT_ONLY = ([{"role": "user", "content": "Add 1 and 2."}], [Message("user", "Add 1 and 2.")], [])
