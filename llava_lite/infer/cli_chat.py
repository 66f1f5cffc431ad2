"""`llava-lite chat`: a multi-turn REPL that streams, or one answer with --prompt / piped stdin."""
from __future__ import annotations

import argparse
import sys

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Message


def run_chat(args: argparse.Namespace) -> None:
    from llava_lite.data.images import load_image
    from llava_lite.infer.chat import Assistant
    from llava_lite.interop.sources import model_dir
    from llava_lite.model.llava import LlavaLite, default_device

    device = getattr(args, "device", None) or default_device()
    model = LlavaLite.from_pretrained(model_dir(args.model), device=device, dtype=getattr(args, "dtype", None))
    assistant = Assistant(model, device)
    images = [load_image(p, where="--image") for p in args.image]
    gen = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    prompt = args.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    if prompt is not None:  # one answer and exit
        reply = assistant.reply([Message("user", _with_images(prompt, len(images)))], images, **gen)
        print(reply.text)
        return
    history: list[Message] = []
    pending = len(images)  # images go with the first user turn
    print(f"llava-lite chat ({args.model}); /reset clears the conversation, /quit or Ctrl-D exits", file=sys.stderr)
    while True:
        try:
            text = input("user> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            history, pending = [], len(images)
            continue
        if not text:
            continue
        history.append(Message("user", _with_images(text, pending)))
        pending = 0
        print("assistant> ", end="", flush=True)
        try:
            reply = assistant.reply(history, images, on_text=lambda d: print(d, end="", flush=True), **gen)
        except ValueError as e:  # e.g. the conversation outgrew the context: say so, keep the session
            print(f"[error] {e}", file=sys.stderr)
            history.pop()
            continue
        print()
        history.append(Message("assistant", reply.text))


def _with_images(text: str, n: int) -> str:
    """Put the image placeholders first, as LLaVA's training data does, unless the user placed them."""
    if n and IMAGE_TOKEN not in text:
        return IMAGE_TOKEN * n + "\n" + text
    return text
