"""Fixtures of the data tests."""
from __future__ import annotations

import os
import shutil

import pytest
from helpers.tiny import MISTRAL
from transformers import LlamaTokenizer

from llava_lite.model.llava import load_tokenizer


@pytest.fixture(scope="module")
def mistral_tok(tmp_path_factory):
    """The real Mistral/Llama SentencePiece tokenizer shipped inside the mistral-common wheel."""
    import mistral_common

    src = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
    d = tmp_path_factory.mktemp("mistral_tok")
    shutil.copy(src, d / "tokenizer.model")
    LlamaTokenizer.from_pretrained(d).save_pretrained(d)  # writes the fast tokenizer files
    tok = load_tokenizer(str(d))
    tok.chat_template = MISTRAL
    return tok
