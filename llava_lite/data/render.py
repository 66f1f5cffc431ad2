"""Render a Conversation into `input_ids` and `labels`, built together from the tokenizer's own chat template.

How the supervised span of each assistant turn is found, without string-split length arithmetic:
  prompt_k = template(messages[:k], add_generation_prompt=True)   # everything before answer k
  full     = template(messages)
`full` must start with every `prompt_k` (a prefix-stable template); answer k then starts right
after `prompt_k`, and its span ends after the end-of-turn special token that follows the content.
`full` is tokenized once with offsets; a token is supervised when its characters overlap a span.
The supervised tokens of each turn must decode back to that turn's text, else a loud RenderError
names the sample (LLaVA silently zeroed such samples: "WARNING: tokenization mismatch").

Each `<image>` token is then expanded to `image_seq_len` copies (label -100) that the model fills
with projected patch features, so sequence lengths are known before the model runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .conversation import IMAGE_PLACEHOLDER, Conversation, DataError, Message

IGNORE = -100


class RenderError(DataError):
    pass


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]
    num_images: int  # images whose placeholders survived truncation (a prefix of conv.images)


def _template(tokenizer, messages: list[Message], generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise RenderError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat_template; set one "
            "(tokenizer.chat_template = ...) or use data.mode=plain"
        )
    chat = [{"role": m.role, "content": m.content} for m in messages]
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=generation_prompt)


def _special_strings(tokenizer) -> list[str]:
    """All special-token strings, longest first, to recognise the end-of-turn marker."""
    found = set(tokenizer.all_special_tokens)
    found |= {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
    found.discard(IMAGE_PLACEHOLDER)
    return sorted((s for s in found if s), key=len, reverse=True)


def _chat_spans(conv: Conversation, messages: list[Message], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    full = _template(tokenizer, messages, False)
    specials = _special_strings(tokenizer)
    spans = []
    for k, m in enumerate(messages):
        if m.role != "assistant":
            continue
        prompt = _template(tokenizer, messages[:k], True)
        if not full.startswith(prompt):
            raise RenderError(
                f"{conv.where}: the chat template renders turn {k} differently once later turns follow "
                "(not prefix-stable), so the answer span cannot be located"
            )
        content = m.content.strip()
        start = full.find(content, len(prompt))
        if start < 0 or full[len(prompt):start].strip():
            raise RenderError(
                f"{conv.where}: assistant turn {k} text not found where the template puts it "
                "(does the template rewrite or drop turns?)"
            )
        end = start + len(content)
        gap = len(full[end:]) - len(full[end:].lstrip())
        eot = next((s for s in specials if full.startswith(s, end + gap)), None)
        if eot is None:
            raise RenderError(f"{conv.where}: no end-of-turn special token after assistant turn {k}")
        spans.append((start, end + gap + len(eot)))
    return full, spans


def _plain_spans(conv: Conversation, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Stage-1 alignment: `<bos><image>...caption<eos>`, loss on the caption and eos only."""
    answers = [m.content.strip() for m in conv.messages if m.role == "assistant"]
    prefix = (tokenizer.bos_token or "") + IMAGE_PLACEHOLDER * len(conv.images)
    text = prefix + answers[0] + tokenizer.eos_token
    return text, [(len(prefix), len(text))]


def _squash(text: str) -> str:
    return "".join(text.split())


def _tokenize(tokenizer, text: str, where: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", False):
        raise RenderError(f"{where}: rendering needs a fast (tokenizers-backed) tokenizer for character offsets")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _expand_images(ids: list[int], labels: list[int], image_token_id: int, image_seq_len: int):
    out_ids, out_labels = [], []
    for i, lab in zip(ids, labels):
        if i == image_token_id:
            out_ids += [image_token_id] * image_seq_len
            out_labels += [IGNORE] * image_seq_len
        else:
            out_ids.append(i)
            out_labels.append(lab)
    return out_ids, out_labels


def _truncate(ids: list[int], labels: list[int], max_length: int, image_token_id: int, image_seq_len: int):
    """Cut to max_length, never through the middle of an image's placeholder run."""
    if len(ids) <= max_length:
        return ids, labels
    cut = max_length
    if ids[cut - 1] == image_token_id and ids[cut] == image_token_id:
        run_start = cut
        while run_start > 0 and ids[run_start - 1] == image_token_id:
            run_start -= 1
        cut = run_start + (cut - run_start) // image_seq_len * image_seq_len  # keep whole images only
    return ids[:cut], labels[:cut]


def render(
    conv: Conversation,
    tokenizer,
    *,
    image_token_id: int,
    image_seq_len: int,
    max_length: int,
    mode: str = "chat",
    system_prompt: str | None = None,
) -> Rendered | None:
    """ids and labels for one validated conversation (the readers validate every record once);
    None when truncation leaves no supervised token."""
    messages = conv.messages
    if system_prompt and messages[0].role != "system":
        messages = [Message("system", system_prompt)] + messages
    if mode == "plain":
        text, spans = _plain_spans(conv, tokenizer)
    else:
        text, spans = _chat_spans(conv, messages, tokenizer)
    ids, offsets = _tokenize(tokenizer, text, conv.where)
    labels = [IGNORE] * len(ids)
    for a, b in spans:
        turn = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
        for i in turn:
            labels[i] = ids[i]
        decoded = tokenizer.decode([ids[i] for i in turn], skip_special_tokens=False)
        if _squash(decoded) != _squash(text[a:b]):
            raise RenderError(
                f"{conv.where}: tokenization mismatch: supervised tokens decode to {decoded!r}, expected {text[a:b]!r}"
            )
    n_found = ids.count(image_token_id)
    if n_found != len(conv.images):
        raise RenderError(
            f"{conv.where}: {n_found} image token(s) after templating but {len(conv.images)} image(s); "
            f"is {IMAGE_PLACEHOLDER!r} a special token of this tokenizer?"
        )
    ids, labels = _expand_images(ids, labels, image_token_id, image_seq_len)
    ids, labels = _truncate(ids, labels, max_length, image_token_id, image_seq_len)
    if all(lab == IGNORE for lab in labels):
        return None
    return Rendered(ids, labels, ids.count(image_token_id) // image_seq_len)


def render_prompt(
    messages: list[Message],
    tokenizer,
    *,
    image_token_id: int,
    image_seq_len: int,
    mode: str = "chat",
    system_prompt: str | None = None,
) -> list[int]:
    """ids of a prompt that ends where the assistant's next answer begins (for generation)."""
    if system_prompt and messages and messages[0].role != "system":
        messages = [Message("system", system_prompt)] + messages
    if mode == "plain":
        n = sum(m.content.count(IMAGE_PLACEHOLDER) for m in messages)
        text = (tokenizer.bos_token or "") + IMAGE_PLACEHOLDER * n
    else:
        text = _template(tokenizer, messages, True)
    ids, _ = _tokenize(tokenizer, text, "prompt")
    ids, _ = _expand_images(ids, [IGNORE] * len(ids), image_token_id, image_seq_len)
    return ids


def end_of_turn_token(tokenizer) -> str:
    """The special token the chat template puts after an assistant answer (a stop token for generation)."""
    probe = Conversation([Message("user", "Hi"), Message("assistant", "Ok")], source="end-of-turn probe")
    text, [(_, end)] = _chat_spans(probe, probe.messages, tokenizer)
    return next(s for s in _special_strings(tokenizer) if text[:end].endswith(s))
