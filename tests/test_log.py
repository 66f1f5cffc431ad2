"""The package logger: bare messages on the current stdout, from the main process only."""
from __future__ import annotations

import logging

import pytest

from llava_lite.log import is_main_process, logger, setup


@pytest.fixture
def package_logger():
    before = list(logger.handlers), logger.level
    setup()
    yield logger
    logger.handlers[:], level = before
    logger.setLevel(level)


@pytest.mark.parametrize("rank", [None, "0"])
def test_the_main_process_speaks_on_stdout(package_logger, capsys, monkeypatch, rank):
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    if rank is not None:
        monkeypatch.setenv("RANK", rank)
    package_logger.info("stage align: 1 process(es), device cpu")
    logging.getLogger("llava_lite.train").warning("careful")
    out = capsys.readouterr()
    assert out.out == "stage align: 1 process(es), device cpu\nWARNING: careful\n" and out.err == ""


@pytest.mark.parametrize("env", [{"RANK": "1"}, {"LOCAL_RANK": "3"}, {"RANK": "2", "LOCAL_RANK": "0"}])
def test_other_ranks_are_silent(package_logger, capsys, monkeypatch, env):
    for key in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert not is_main_process()
    package_logger.info("stage align: 2 process(es)")
    assert capsys.readouterr().out == ""


def test_setup_is_idempotent(package_logger):
    setup()
    setup()
    assert [type(h).__name__ for h in package_logger.handlers].count("_CurrentStdout") == 1
