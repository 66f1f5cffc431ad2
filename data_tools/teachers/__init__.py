"""Teachers: one interface (`Teacher.complete(Request) -> str`, llava_lite.infer.openai_client), three kinds."""
from __future__ import annotations

from typing import Any

from llava_lite.config import ConfigError
from llava_lite.infer.openai_client import Teacher

from .rule import RuleTeacher

__all__ = ["RuleTeacher", "make_teacher"]


def make_teacher(kind: str, **options: Any) -> Teacher:
    """'rule', 'openai' (options: model, base_url, concurrency, requests_per_minute, max_retries...)
    or 'local' (options: model_dir, max_new_tokens, temperature). Heavy imports only when used."""
    if kind == "rule":
        return RuleTeacher()
    if kind == "openai":
        from llava_lite.infer.openai_client import OpenAITeacher

        return OpenAITeacher(**options)
    if kind == "local":
        from .local import LocalTeacher

        return LocalTeacher(**options)
    raise ConfigError(f"unknown teacher {kind!r}; choose rule, openai or local")
