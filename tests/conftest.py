"""Tiny models made on the fly: a byte-level BPE tokenizer with a chat template, a 2-layer Llama,
and the packaged tiny open_clip config. Nothing touches the network."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers.tiny import make_tiny_lm


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """A ChatML tiny Llama + tokenizer saved to a directory."""
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm"), template="chatml")


@pytest.fixture(scope="session")
def tiny_lm_llama3(tmp_path_factory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny_lm_llama3"), template="llama3")
