"""A teacher that is a local transformers causal LM (any model directory), run greedily by default."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llava_lite.infer.openai_client import Request


class LocalTeacher:
    concurrency = 1  # one model, one forward at a time

    def __init__(
        self, model_dir: str | Path, max_new_tokens: int = 512, temperature: float = 0.0, device: str | None = None
    ) -> None:
        self.name = f"local:{Path(model_dir).name}"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir).to(self.device).eval()
        self.max_new_tokens, self.temperature = max_new_tokens, temperature

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """The model's own chat template; a plain 'role: text' transcript for a base model without one."""
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(f"{m['role']}: {m['content']}\n\n" for m in messages) + "assistant:"

    @torch.no_grad()
    def complete(self, request: Request) -> str:
        enc = self.tokenizer(
            self.prompt(request.messages), return_tensors="pt", add_special_tokens=not self.tokenizer.chat_template
        )
        enc = {k: v.to(self.device) for k, v in enc.items()}
        sample = self.temperature > 0
        if sample:
            torch.manual_seed(request.seed)  # reproducible per request, whatever ran before it
        out = self.model.generate(
            **enc,
            max_new_tokens=self.max_new_tokens,
            do_sample=sample,
            temperature=self.temperature if sample else None,
            top_p=None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id,
        )
        return self.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
