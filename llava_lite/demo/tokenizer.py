"""A byte-level BPE tokenizer trained on the world's text, wrapped for transformers.

Byte-level, so any text encodes and `decode(encode(text)) == text` (no normaliser; digits are
split one by one, which helps arithmetic). Special tokens: `<s>` `</s>` `<pad>` `<unk>`, the
ChatML turn markers `<|im_start|>` `<|im_end|>`, and `<image>`. The chat template is ChatML;
assistant turns are wrapped in `{% generation %}` so `return_assistant_tokens_mask` works.
"""
from __future__ import annotations

import time
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.demo.corpus import assert_no_heldout, text_task_documents, vocabulary_text, world_documents
from llava_lite.demo.presets import finished, mark_finished, resolve, world_fingerprint
from llava_lite.log import logger

SPECIAL = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
CHAT_TOKENS = {"im_start_token": "<|im_start|>", "im_end_token": "<|im_end|>", "image_token": IMAGE_TOKEN}
# Content may be a string or a list of {"type": "text"|"image"} parts (an image part -> <image>).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set content = message['content'] -%}"
    "{%- else -%}{%- set content = namespace(s='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set content.s = content.s + '<image>' -%}"
    "{%- else -%}{%- set content.s = content.s + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set content = content.s -%}{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{% generation %}{{- content + '<|im_end|>' -}}{% endgeneration %}{{- '\n' -}}"
    "{%- else -%}{{- content + '<|im_end|>\n' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\n' -}}{%- endif -%}"
)


def general_english() -> list[str]:
    """~0.5 MB of English prose and code that ships with Python (the `help()` topics), so words
    the world never uses (in later instruction data, in a chat) still get whole-word tokens."""
    import pydoc_data.topics

    return [pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics)]


def tokenizer_corpus(world_dir: str | Path, seed: int = 0) -> list[str]:
    """Train-split captions and Q&A, the train text tasks, the world's vocabulary, general English."""
    texts = world_documents(world_dir, "train", seed) + text_task_documents(world_dir, "train") + vocabulary_text()
    assert_no_heldout(texts, "tokenizer corpus")
    return texts + general_english()


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIAL.values()) + list(CHAT_TOKENS.values())
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, **SPECIAL, extra_special_tokens=dict(CHAT_TOKENS), chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False, model_max_length=1024, padding_side="right",
    )


def train_tokenizer(world_dir: str | Path, out_dir: str | Path, preset: str | dict = "full") -> dict:
    """Train on the world's text and `save_pretrained` into `out_dir` (skipped when already done)."""
    p = resolve(preset)
    cfg = {"tokenizer": p["tokenizer"], "seed": p["seed"], "world": world_fingerprint(world_dir)}
    if (done := finished(out_dir, cfg)) is not None:
        logger.info(f"[tokenizer] reusing {out_dir} (vocab {done['vocab']})")
        return done
    t0 = time.time()
    texts = tokenizer_corpus(world_dir, p["seed"])
    tok = build_tokenizer(texts, p["tokenizer"]["vocab_size"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(out_dir)
    sample = "\n".join(texts[:200])
    info = {"vocab": len(tok), "chars_per_token": round(len(sample) / len(tok.backend_tokenizer.encode(sample).ids), 2),
            "corpus_docs": len(texts), "seconds": round(time.time() - t0, 2)}
    logger.info(f"[tokenizer] vocab {info['vocab']}, {info['chars_per_token']} chars/token, {info['seconds']} s "
                f"-> {out_dir}")
    return mark_finished(out_dir, cfg, info)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(str(path))
