"""Rendering: labels cover exactly the assistant text + end-of-turn token, on three real templates."""
from __future__ import annotations

import pytest
from helpers.tiny import MISTRAL, make_tokenizer
from helpers.tokenizers import saved_tokenizer, supervised_runs
from transformers import AutoTokenizer

from llava_lite.constants import IGNORE_INDEX, IMAGE_TOKEN
from llava_lite.data.conversation import Conversation, DataError, Message
from llava_lite.data.render import RenderError, end_of_turn_token, render, render_prompt

P = 5  # image tokens per image in these tests


@pytest.fixture(params=["chatml", "llama3", "mistral"])
def tok(request, tmp_path, mistral_tok):
    return mistral_tok if request.param == "mistral" else saved_tokenizer(request.param, tmp_path)


def conv(*turns, images=(), system=None):
    msgs = [Message("system", system)] if system else []
    msgs += [Message("user" if i % 2 == 0 else "assistant", t) for i, t in enumerate(turns)]
    return Conversation(msgs, list(images), id="s1", source="test.json:0")


def run(tok, c, max_length=4096, **kw):
    return render(c, tok, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN), image_seq_len=P,
                  max_length=max_length, **kw)


def test_labels_are_exactly_answers_plus_end_of_turn(tok):
    answers = ["The circle is red.", "Yes, there are 3 of them!"]
    r = run(tok, conv("<image>\nWhat colour is the circle?", answers[0], "Are there more?", answers[1],
                      images=["a.png"], system=None if tok.chat_template == MISTRAL else "Be brief."))
    eot = end_of_turn_token(tok)
    runs = supervised_runs(r)
    assert len(runs) == 2
    for run_ids, answer in zip(runs, answers):
        assert tok.decode(run_ids, skip_special_tokens=False).strip() == answer + eot
        assert run_ids[-1] == tok.convert_tokens_to_ids(eot)
    # everything else, prompts and image slots included, is unsupervised
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert r.input_ids.count(image_id) == P and r.num_images == 1
    assert all(lab == IGNORE_INDEX for i, lab in zip(r.input_ids, r.labels) if i == image_id)


def test_prompt_plus_answer_reproduces_training_ids(tok):
    """Generation prompts are the exact prefix that training conditions on."""
    c = conv("<image>\nWhat is it?", "A star.", images=["a.png"])
    r = run(tok, c)
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    prompt = render_prompt(c.messages[:1], tok, image_token_id=image_id, image_seq_len=P)
    first = next(i for i, lab in enumerate(r.labels) if lab != IGNORE_INDEX)
    assert r.input_ids[:first] == prompt[: first]
    assert len(prompt) in (first, first + 1)  # a tokenizer may merge the space before the answer


def test_plain_mode_supervises_caption_and_eos(tok):
    r = run(tok, conv("<image>\nDescribe briefly.", "A blue square.", images=["a.png"]), mode="plain")
    (run_ids,) = supervised_runs(r)
    assert tok.decode(run_ids, skip_special_tokens=False).strip() == "A blue square." + tok.eos_token
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert r.input_ids.count(image_id) == P
    assert "Describe" not in tok.decode(r.input_ids)


def test_multiple_images_expand_in_order(tok):
    r = run(tok, conv("<image> and <image>: same colour?", "No.", images=["a.png", "b.png"]))
    assert r.input_ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 2 * P and r.num_images == 2


def test_truncation_keeps_whole_images_and_skips_answerless(tok):
    c = conv("<image>\nQ?", "A long answer " * 20, images=["a.png"])
    full = run(tok, c)
    first = next(i for i, lab in enumerate(full.labels) if lab != IGNORE_INDEX)
    cut = run(tok, c, max_length=first + 3)
    assert len(cut.input_ids) == first + 3 and sum(lab != IGNORE_INDEX for lab in cut.labels) == 3
    assert run(tok, c, max_length=first) is None  # the answer is truncated away: skipped, not trained
    image_at = full.input_ids.index(tok.convert_tokens_to_ids(IMAGE_TOKEN))
    assert run(tok, c, max_length=image_at + 2) is None  # never half an image


def test_bad_inputs_are_loud():
    """The schema's checks (run once per record, by the readers, before rendering)."""
    with pytest.raises(DataError, match="test.json:0.*1 <image> placeholder.*2 image"):
        conv("<image>\nQ?", "A.", images=["a.png", "b.png"]).validate()
    with pytest.raises(DataError, match="assistant turn 1 is empty"):
        conv("Q?", "  ").validate()
    with pytest.raises(DataError, match="alternate"):
        Conversation([Message("user", "a"), Message("user", "b")], source="x").validate()


def test_template_that_rewrites_history_is_rejected(tmp_path):
    tok = saved_tokenizer("chatml", tmp_path)
    # A template that hides earlier assistant turns (as some "thinking" templates do) is not prefix-stable.
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['role'] == 'assistant' and not loop.last %}...{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(RenderError, match="turn 1 .*(prefix-stable|rewrite or drop)"):
        run(tok, conv("Hi", "Hello.", "Again", "Hello again."))


def test_missing_chat_template_is_named(tmp_path):
    tok = saved_tokenizer("chatml", tmp_path)
    tok.chat_template = None
    with pytest.raises(RenderError, match="no chat_template"):
        run(tok, conv("Hi", "Hello."))


def test_image_token_must_be_special(tmp_path):
    tok = AutoTokenizer.from_pretrained(make_tokenizer("chatml").save_pretrained(tmp_path) and tmp_path)
    with pytest.raises(RenderError, match="image token"):
        render(conv("<image>\nQ?", "A.", images=["a.png"]), tok, image_token_id=-1, image_seq_len=P, max_length=99)
