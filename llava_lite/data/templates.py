"""LLaVA's conversation templates (`llava/conversation.py` conv modes) as Jinja chat templates, by name.

    set_chat_template(tokenizer, "vicuna_v1")        # or "path/to/template.jinja"

Rendering (`render`) works from `tokenizer.chat_template`, so a tokenizer that ships none (Vicuna's)
or a run that must reproduce a LLaVA checkpoint's prompt format picks one here. Each template is
prefix-stable and puts a special token (`eos_token`, or `<|im_end|>` for chatml) after every
answer; a leading system message replaces the default system prompt. The texts are those of
LLaVA's `Conversation.get_prompt()` with the `bos_token` the LLaVA tokenizer call prepends:

vicuna_v1 (conv_vicuna_v1, sep " ", sep2 "</s>"):
    <s>{system} USER: {q1} ASSISTANT: {a1}</s>USER: {q2} ASSISTANT: {a2}</s>
llava_llama_2 (conv_llava_llama_2, sep "<s>", sep2 "</s>"):
    <s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n\\n{q1} [/INST] {a1} </s><s>[INST] {q2} [/INST] {a2} </s>
mistral_instruct (conv_mistral_instruct: the LLAMA_2 style with sep "" and no default system):
    <s>[INST] {q1} [/INST] {a1} </s>[INST] {q2} [/INST] {a2} </s>
chatml (conv_chatml_direct's system prompt, standard ChatML layout with a newline after each turn):
    <|im_start|>system\\n{system}<|im_end|>\\n<|im_start|>user\\n{q1}<|im_end|>\\n<|im_start|>assistant\\n{a1}<|im_end|>\\n...

Generation prompts end where the answer starts: "ASSISTANT:", "[/INST]", "<|im_start|>assistant\\n".
Differences from LLaVA: an empty system prompt emits nothing (vicuna_v1: no stray leading space;
chatml: no empty system turn); chatml has no bos (ChatML tokenizers add none, and SmolLM2's bos
*is* `<|im_start|>`) and keeps the newline after `<|im_end|>` that LLaVA's MPT separator style
drops, so it matches the ChatML layout the models were trained with.
"""
from __future__ import annotations

import json
from pathlib import Path

from llava_lite.config import ConfigError

CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")

SYSTEM_PROMPTS = {
    "vicuna_v1": "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "llava_llama_2": "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language.",
    "mistral_instruct": "",
    "chatml": "Answer the questions.",
}


def _header(name: str) -> str:
    """Jinja that sets `system` (a leading system message, else the default) and `turns` (the rest)."""
    default = json.dumps(SYSTEM_PROMPTS[name])  # a valid Jinja string literal
    return (
        "{%- if messages and messages[0]['role'] == 'system' -%}"
        "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
        "{%- else -%}"
        "{%- set system = " + default + " -%}{%- set turns = messages -%}"
        "{%- endif -%}"
    )


# Raised from inside a template (transformers provides raise_exception) for a role it cannot place.
_BAD_ROLE = "{{ raise_exception('only user and assistant turns may follow the system message') }}"

# Texts below never put a literal newline right after a `%}`: transformers renders with
# trim_blocks, which would eat it.
_VICUNA_V1 = _header("vicuna_v1") + (
    "{{ bos_token or '' }}{% if system %}{{ system }} {% endif %}"
    "{% for m in turns %}"
    "{% if m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}ASSISTANT: {{ m['content'] }}{{ eos_token }}"
    "{% else %}" + _BAD_ROLE + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _llama_2(name: str, bos_every_turn: bool) -> str:
    """LLaVA's LLAMA_2 separator style: the system prompt is wrapped into the first [INST] block."""
    bos_user = "{{ bos_token or '' }}" if bos_every_turn else ""
    bos_first = "" if bos_every_turn else "{{ bos_token or '' }}"
    return _header(name) + bos_first + (
        "{% for m in turns %}"
        "{% if m['role'] == 'user' %}" + bos_user + "[INST] "
        "{% if loop.first and system %}<<SYS>>\n{{ system }}\n<</SYS>>\n\n{% endif %}"
        "{{ m['content'] }} [/INST]"
        "{% elif m['role'] == 'assistant' %} {{ m['content'] }} {{ eos_token }}"
        "{% else %}" + _BAD_ROLE + "{% endif %}"
        "{% endfor %}"
    )


_CHATML = _header("chatml") + (
    "{% if system %}<|im_start|>system\n{{ system }}<|im_end|>\n{% endif %}"
    "{% for m in turns %}"
    "{% if m['role'] in ('user', 'assistant') %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% else %}" + _BAD_ROLE + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEMPLATES: dict[str, str] = {
    "vicuna_v1": _VICUNA_V1,
    "llava_llama_2": _llama_2("llava_llama_2", bos_every_turn=True),
    "mistral_instruct": _llama_2("mistral_instruct", bos_every_turn=False),
    "chatml": _CHATML,
}


def _special_tokens(tokenizer) -> set[str]:
    found = set(tokenizer.all_special_tokens)
    found |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    return found


def template_text(name_or_path: str) -> str:
    """The Jinja text of a name in TEMPLATES or of a `.jinja` file; a ConfigError naming the choices
    otherwise. Needs no tokenizer, so a run checks `data.chat_template` before any weights load."""
    name_or_path = str(name_or_path)
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    if name_or_path.endswith(".jinja"):
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.chat_template: chat template file {name_or_path!r} not found; fix the path "
                              f"(relative paths are relative to the current directory)")
        return path.read_text(encoding="utf-8")
    raise ConfigError(f"data.chat_template: unknown chat template {name_or_path!r}; use one of "
                      f"{', '.join(TEMPLATES)} or a path to a .jinja file")


def set_chat_template(tokenizer, name_or_path: str) -> None:
    """Set `tokenizer.chat_template` from a name in TEMPLATES or from a `.jinja` file.

    A template that uses ChatML markers (chatml, or a .jinja file that contains them) gets
    `<|im_start|>` / `<|im_end|>` added as special tokens when the tokenizer lacks them, since
    rendering needs a special end-of-turn token. That can grow the vocabulary: the caller must
    then resize the LM's embeddings (`lm.resize_token_embeddings(len(tokenizer))`). The template
    and added tokens are saved with the tokenizer (`save_pretrained`).
    """
    template = template_text(name_or_path)
    missing = [t for t in CHATML_TOKENS if t in template and t not in _special_tokens(tokenizer)]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    tokenizer.chat_template = template
