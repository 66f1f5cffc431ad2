"""Render a Conversation into `input_ids` and `labels`, built together from the tokenizer's own chat template.

How the supervised span of each assistant turn is found, without string-split length arithmetic:
  prompt_k = template(messages[:k], add_generation_prompt=True)   # everything before answer k
  full     = template(messages)
`full` must start with every `prompt_k` (a prefix-stable template); answer k then starts right
after `prompt_k`, and its span ends after the end-of-turn special token that follows the content.
`full` is tokenized once with offsets; a token is supervised when its characters overlap a span.
The supervised tokens of each turn must decode back to that turn's text, else a loud RenderError
names the sample (LLaVA silently zeroed such samples: "WARNING: tokenization mismatch").

Content is text. A special-token string inside a message (`<|im_end|>` in a scraped answer, a
chat user typing `<|im_start|>system`) must not become a control token, or it would end a turn
mid-answer and put a forged turn under supervision. Such strings are wrapped in two private
markers (Unicode noncharacters) before templating; the rendered text is then tokenised piece by
piece: the template's own text normally, each marked string as plain text (split_special_tokens).
Only the template's markers, and `<image>` in user and system text, are control tokens. Content
without special strings renders exactly as before (one tokenizer call).

Each `<image>` token is then expanded to its image's token count (`image_seq_len`: one count, or
one per image with AnyRes) of copies (label -100) that the model fills with projected features, so
sequence lengths are known before the model runs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, DataError, Message


class RenderError(DataError):
    """A conversation the tokenizer's template cannot render faithfully (reason "render failed")."""

    def __init__(self, message: str = "", reason: str = "render failed"):
        super().__init__(message, reason)


_OPEN, _CLOSE = "\ufdd0", "\ufdd1"  # noncharacters: never text; removed from content before marking
_MARKED = re.compile(f"{_OPEN}(.*?){_CLOSE}", re.S)


@dataclass
class Rendered:
    input_ids: list[int]
    labels: list[int]
    num_images: int  # images whose placeholders survived truncation (a prefix of conv.images)
    segments: list[int] | None = None  # isolated turns (data/isolate.py): 0 = shared prefix, k = question k


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
    found.discard(IMAGE_TOKEN)
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


def _plain_spans(messages: list[Message], n_images: int, tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """Stage-1 alignment: `<bos><image>...caption<eos>`, loss on the caption and eos only."""
    answers = [m.content.strip() for m in messages if m.role == "assistant"]
    prefix = (tokenizer.bos_token or "") + IMAGE_TOKEN * n_images
    text = prefix + answers[0] + tokenizer.eos_token
    return text, [(len(prefix), len(text))]


def _alternation(strings: list[str]) -> re.Pattern:
    return re.compile("|".join(re.escape(s) for s in sorted(strings, key=len, reverse=True)) or "(?!)")


def _mark(tokenizer, messages: list[Message]) -> tuple[list[Message], list[Message] | None]:
    """(the messages, the same with every special-token string of their content wrapped in markers,
    or None when no content holds one). `<image>` is a control token in user and system text only."""
    specials = _special_strings(tokenizer)
    text_re, answer_re = _alternation(specials), _alternation(specials + [IMAGE_TOKEN])
    clean, marked = [], []
    for m in messages:
        content = m.content.replace(_OPEN, "").replace(_CLOSE, "")
        rx = answer_re if m.role == "assistant" else text_re
        clean.append(Message(m.role, content))
        marked.append(Message(m.role, rx.sub(lambda x: _OPEN + x.group(0) + _CLOSE, content)))
    return clean, (marked if any(a.content != b.content for a, b in zip(clean, marked)) else None)


def _squash(text: str) -> str:
    return "".join(text.split())


def _encode(tokenizer, text: str, as_text: bool = False, first: bool = True) -> tuple[list[int], list[tuple[int, int]]]:
    """ids and offsets of one piece; `as_text`: special-token strings are plain text. A piece from
    the middle of a conversation is encoded after a newline that is then dropped, so SentencePiece
    does not add the word-start it adds at the start of a string (as transformers does)."""
    kw = dict(add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=as_text)
    if not first:
        newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
        enc = tokenizer("\n" + text, **kw)
        ids = list(enc["input_ids"])
        if ids[: len(newline)] == newline:
            offsets = [(max(a - 1, 0), max(b - 1, 0)) for a, b in enc["offset_mapping"][len(newline):]]
            return ids[len(newline):], offsets
    enc = tokenizer(text, **kw)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _tokenize(tokenizer, rendered: str, where: str, text: str | None = None) -> tuple[list[int], list[tuple[int, int]]]:
    """Tokenise a rendered conversation; offsets refer to `text`, the rendering without markers.
    Marked strings (special-token text inside content) are encoded as plain text."""
    if not getattr(tokenizer, "is_fast", False):
        raise RenderError(f"{where}: rendering needs a fast (tokenizers-backed) tokenizer for character offsets")
    if _OPEN not in rendered and _CLOSE not in rendered:
        return _encode(tokenizer, rendered)
    pieces = _MARKED.split(rendered)  # [template text, marked string, template text, ...]
    if any(_OPEN in p or _CLOSE in p for p in pieces) or (text is not None and "".join(pieces) != text):
        raise RenderError(f"{where}: the chat template splits or moves special-token text inside a message, so it "
                          "cannot be kept as plain text")
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    pos = 0
    for i, piece in enumerate(pieces):
        if not piece:
            continue
        piece_ids, piece_offsets = _encode(tokenizer, piece, as_text=i % 2 == 1, first=pos == 0)
        if i % 2 == 1:
            if tokenizer.convert_tokens_to_ids(piece) in piece_ids:
                raise RenderError(f"{where}: {piece!r} in a message cannot be encoded as plain text by this tokenizer")
            piece_offsets = [(0, len(piece))] * len(piece_ids)
        ids += piece_ids
        offsets += [(pos + a, pos + b) for a, b in piece_offsets]
        pos += len(piece)
    return ids, offsets


def _image_counts(image_seq_len: int | list[int], n: int) -> list[int]:
    return list(image_seq_len) if isinstance(image_seq_len, (list, tuple)) else [image_seq_len] * n


def _expand_images(ids: list[int], labels: list[int], image_token_id: int, counts: list[int]):
    """Each `<image>` token becomes its image's count of placeholder tokens (label -100)."""
    out_ids, out_labels, k = [], [], 0
    for i, lab in zip(ids, labels):
        if i == image_token_id:
            out_ids += [image_token_id] * counts[k]
            out_labels += [IGNORE_INDEX] * counts[k]
            k += 1
        else:
            out_ids.append(i)
            out_labels.append(lab)
    return out_ids, out_labels


def _truncate(ids: list[int], labels: list[int], max_length: int, image_token_id: int, counts: list[int]):
    """Cut to max_length, never through an image's placeholder run; returns the images kept whole too."""
    if len(ids) <= max_length:
        return ids, labels, len(counts)
    cut, kept, pos = max_length, 0, 0
    for n in counts:
        pos = ids.index(image_token_id, pos)  # where this image's run begins
        if pos + n > cut:
            cut = min(cut, pos)
            break
        kept, pos = kept + 1, pos + n
    return ids[:cut], labels[:cut], kept


def render(
    conv: Conversation,
    tokenizer,
    *,
    image_token_id: int,
    image_seq_len: int | list[int],  # image tokens per image, or one count for each image in order
    max_length: int,
    mode: str = "chat",
    system_prompt: str | None = None,
) -> Rendered | None:
    """ids and labels for one validated conversation (the readers validate every record once);
    None when truncation leaves no supervised token."""
    messages = conv.messages
    if system_prompt and messages[0].role != "system":
        messages = [Message("system", system_prompt)] + messages
    messages, marked = _mark(tokenizer, messages)
    if mode == "plain":
        text, spans = _plain_spans(messages, len(conv.images), tokenizer)
        rendered = _plain_spans(marked, len(conv.images), tokenizer)[0] if marked else text
    else:
        text, spans = _chat_spans(conv, messages, tokenizer)
        rendered = _template(tokenizer, marked, False) if marked else text
    ids, offsets = _tokenize(tokenizer, rendered, conv.where, text)
    labels = [IGNORE_INDEX] * len(ids)
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
            f"is {IMAGE_TOKEN!r} a special token of this tokenizer?"
        )
    counts = _image_counts(image_seq_len, n_found)
    ids, labels = _expand_images(ids, labels, image_token_id, counts)
    ids, labels, kept = _truncate(ids, labels, max_length, image_token_id, counts)
    if all(lab == IGNORE_INDEX for lab in labels):
        return None
    return Rendered(ids, labels, kept)


def render_prompt(
    messages: list[Message],
    tokenizer,
    *,
    image_token_id: int,
    image_seq_len: int | list[int],
    mode: str = "chat",
    system_prompt: str | None = None,
) -> list[int]:
    """ids of a prompt that ends where the assistant's next answer begins (for generation)."""
    if system_prompt and messages and messages[0].role != "system":
        messages = [Message("system", system_prompt)] + messages
    if mode == "plain":
        n = sum(m.content.count(IMAGE_TOKEN) for m in messages)
        text = (tokenizer.bos_token or "") + IMAGE_TOKEN * n
    else:  # a user typing "<|im_start|>system" writes text, not a turn
        clean, marked = _mark(tokenizer, messages)
        text = _template(tokenizer, marked or clean, True)
    ids, _ = _tokenize(tokenizer, text, "prompt")
    counts = _image_counts(image_seq_len, ids.count(image_token_id))
    ids, _ = _expand_images(ids, [IGNORE_INDEX] * len(ids), image_token_id, counts)
    return ids


def end_of_turn_token(tokenizer) -> str:
    """The special token the chat template puts after an assistant answer (a stop token for generation)."""
    probe = Conversation([Message("user", "Hi"), Message("assistant", "Ok")], source="end-of-turn probe")
    text, [(_, end)] = _chat_spans(probe, probe.messages, tokenizer)
    return next(s for s in _special_strings(tokenizer) if text[:end].endswith(s))
