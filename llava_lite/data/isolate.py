"""Isolated turns: a record of independent questions about one image, trained as that many one-question records.

A record that asks several short questions about one image ("What colour is the cube?" /
"How many spheres are there?" / ...) lets later questions read earlier answers: in training the
model can copy "red" from turn 2 into turn 5, a shortcut that fails at evaluation, where each
question comes alone. With `isolate_turns: true` on a data source (SourceConfig), each question is
rendered as its own one-question record, and the records share one copy of their common prefix
(system prompt, image tokens):

    ids       [ prefix (image ...)        | \\n Q1 <end> A1 <end> | \\n Q2 <end> A2 <end> | ... ]
    segments  [ 0 0 0 ...                 | 1 1 1 ...             | 2 2 2 ...             ]
    positions [ 0 1 2 ... P-1             | P P+1 ...             | P P+1 ...             ]

Each turn attends to the prefix and to itself (model/packed_attention.py `segment_attention`), and
its positions continue from the prefix as if it were alone, so the loss equals the summed losses of
the one-question records, with the image encoded once.

A record is rendered whole instead when it cannot be split that way: a single question, an image
outside the first user turn, or renders whose shared prefix does not hold every image token (an
image placed after the question text). Turns that do not fit in `max_length` are dropped whole,
last first.
"""
from __future__ import annotations

from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, Message
from llava_lite.data.render import Rendered, render


def split_turns(conv: Conversation) -> list[Conversation] | None:
    """One conversation per question: [system] + question k (in the place the first question takes
    beside the first turn's images) + answer k. None when the record cannot be split."""
    system = conv.messages[:1] if conv.messages[0].role == "system" else []
    body = conv.messages[len(system):]
    pairs = [(body[i], body[i + 1]) for i in range(0, len(body) - 1, 2)]
    if len(pairs) < 2 or any(IMAGE_TOKEN in user.content for user, _ in pairs[1:]):
        return None
    first = pairs[0][0].content
    question = first.replace(IMAGE_TOKEN, "").strip()
    if not question:
        return None
    out = []
    for k, (user, answer) in enumerate(pairs):
        content = first if k == 0 else first.replace(question, user.content.strip(), 1)
        out.append(Conversation(system + [Message("user", content), answer], conv.images, conv.id,
                                f"{conv.source} turn {k}"))
    return out


def common_prefix(rows: list[list[int]]) -> int:
    n = min(len(r) for r in rows)
    for i in range(n):
        if any(r[i] != rows[0][i] for r in rows[1:]):
            return i
    return n


def render_isolated(conv: Conversation, tokenizer, *, image_token_id: int, image_seq_len: int | list[int],
                    max_length: int, mode: str = "chat", system_prompt: str | None = None) -> Rendered | None:
    """`render`, with each question of the record in its own segment (see the module docstring)."""
    kw = dict(image_token_id=image_token_id, image_seq_len=image_seq_len, mode=mode, system_prompt=system_prompt)
    parts = split_turns(conv) if mode == "chat" else None
    if parts is None:
        return render(conv, tokenizer, max_length=max_length, **kw)
    whole = [render(p, tokenizer, max_length=1 << 62, **kw) for p in parts]
    n = common_prefix([r.input_ids for r in whole])
    if any(image_token_id in r.input_ids[n:] or any(x != IGNORE_INDEX for x in r.labels[:n]) for r in whole):
        return render(conv, tokenizer, max_length=max_length, **kw)
    if len(whole[0].input_ids) > max_length:  # not even the first question fits: cut it as render does
        return render(parts[0], tokenizer, max_length=max_length, **kw)
    ids, labels, segments = whole[0].input_ids[:n], whole[0].labels[:n], [0] * n
    for k, r in enumerate(whole, start=1):
        tail = len(r.input_ids) - n
        if len(ids) + tail > max_length:
            break
        ids, labels, segments = ids + r.input_ids[n:], labels + r.labels[n:], segments + [k] * tail
    return Rendered(ids, labels, whole[0].num_images, segments)
