"""The assistant behind `llava-lite chat`, `llava-lite serve` and evaluation.

`Assistant.reply(messages, images)` renders the conversation with the same code as training,
decodes through the one decoding loop (`decode.generate`), streams text deltas through `on_text`,
and honours stop strings. `reply_batch` answers many conversations at once, greedily.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Message
from llava_lite.data.images import load_image
from llava_lite.data.render import render_prompt
from llava_lite.errors import PromptError
from llava_lite.infer.decode import generate
from llava_lite.model.llava import LlavaLite


@dataclass
class Reply:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class Assistant:
    def __init__(self, model: LlavaLite, device: str | torch.device | None = None):
        self.model = model.eval()
        self.device = torch.device(device) if device else model.device
        self.model.to(self.device)
        self.lock = threading.Lock()  # one generation at a time on the one model

    def encode(self, messages: list[Message], images: list[Image.Image]) -> tuple:
        """Prompt ids [1, T], pixel_values [N, 3, H, W] (None when there is no image) and, with AnyRes,
        image_sizes [images, 2] (else None): pixel_values then holds each image's tiles."""
        n = sum(m.content.count(IMAGE_TOKEN) for m in messages)
        if n != len(images):
            raise PromptError(f"{n} {IMAGE_TOKEN} placeholder(s) but {len(images)} image(s); "
                              f"put one {IMAGE_TOKEN} in the text per image")
        m = self.model
        images = [load_image(im) for im in images]
        sizes = [(im.height, im.width) for im in images]
        ids = render_prompt(messages, m.tokenizer, image_token_id=m.image_token_id,
                            image_seq_len=[m.image_tokens(size) for size in sizes],
                            mode=m.cfg.render_mode, system_prompt=m.cfg.system_prompt)
        pixels = torch.cat([m.vision.image_to_pixels(im) for im in images]).to(self.device) if images else None
        image_sizes = torch.tensor(sizes) if images and m.vision.anyres is not None else None
        return torch.tensor([ids], device=self.device), pixels, image_sizes

    def reply(
        self,
        messages: list[Message],
        images: list[Image.Image] = (),
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | None = None,
        seed: int | None = None,
        on_text: Callable[[str], object] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Reply:
        """Answer the last user turn. `on_text(delta)` receives text as it is produced; `should_stop()`
        returning True (e.g. a client disconnected) ends generation early."""
        ids, pixels, sizes = self.encode(messages, list(images))
        context = getattr(self.model.lm.config, "max_position_embeddings", None)
        if context is not None:
            if ids.shape[1] >= context:
                raise PromptError(f"the prompt is {ids.shape[1]} tokens, the model's context is {context}: "
                                  "start a new conversation or send less")
            max_new_tokens = min(max_new_tokens, context - ids.shape[1])
        tok = self.model.tokenizer
        stop = [s for s in (stop or []) if s]
        tokens: list[int] = []
        state = {"sent": "", "hit_stop": False}

        def on_token(_row: int, token: int) -> bool:
            tokens.append(token)
            text = tok.decode(tokens, skip_special_tokens=True)
            cut = min((text.find(s) for s in stop if s in text), default=-1)
            if cut >= 0:
                text, state["hit_stop"] = text[:cut], True
            # Hold back an incomplete UTF-8 sequence and any tail that could still become a stop string.
            safe = text if state["hit_stop"] else _stable_prefix(text, stop)
            if on_text is not None and len(safe) > len(state["sent"]):
                on_text(safe[len(state["sent"]):])
                state["sent"] = safe
            return state["hit_stop"] or bool(should_stop and should_stop())

        generator = None
        if seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
        with self.lock:
            generate(self.model, [ids[0].tolist()], pixels, image_sizes=sizes, max_new_tokens=max_new_tokens,
                     temperature=temperature, top_p=top_p, on_token=on_token, generator=generator)
        text = tok.decode(tokens, skip_special_tokens=True)
        cut = min((text.find(s) for s in stop if s in text), default=-1)
        if cut >= 0:
            text = text[:cut]
        if on_text is not None and len(text) > len(state["sent"]):
            on_text(text[len(state["sent"]):])
        finish = "length" if len(tokens) >= max_new_tokens and not state["hit_stop"] else "stop"
        return Reply(text, ids.shape[1], len(tokens), finish)

    def reply_batch(self, chats: list[tuple[list[Message], list]], max_new_tokens: int = 16,
                    temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """Answers to several independent conversations at once: greedy (evaluation), or sampled
        (temperature > 0; `seed` makes the draw repeatable)."""
        encoded = [self.encode(messages, list(images)) for messages, images in chats]
        context = getattr(self.model.lm.config, "max_position_embeddings", None)
        longest = max(e[0].shape[1] for e in encoded)
        if context is not None and longest + max_new_tokens > context:
            raise PromptError(f"a prompt of {longest} tokens + {max_new_tokens} new ones exceeds the model's "
                              f"context of {context}; ask for fewer new tokens or shorten the prompt")
        pixels = [p for _, p, _ in encoded if p is not None]
        sizes = [s for _, _, s in encoded if s is not None]
        with self.lock:
            generator = None if seed is None else torch.Generator(device=self.device).manual_seed(seed)
            new = generate(self.model, [e[0][0].tolist() for e in encoded], torch.cat(pixels) if pixels else None,
                           image_sizes=torch.cat(sizes) if sizes else None, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_p=top_p, generator=generator)
        return [self.model.tokenizer.decode(t, skip_special_tokens=True) for t in new]


def _stable_prefix(text: str, stop: list[str]) -> str:
    text = text.rstrip("\ufffd")  # a multi-byte character still being decoded
    for s in stop:  # a suffix that is the start of a stop string may still turn into it
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                return text[:-k]
    return text
