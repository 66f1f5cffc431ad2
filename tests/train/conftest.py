"""Fixtures of the training tests."""
from __future__ import annotations

import pytest
from helpers.tiny import make_llava_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Captions, conversations (images + text-only) and an Alpaca file, with their images."""
    return make_llava_data(tmp_path_factory.mktemp("data"), n=24)
