"""Teachers: one interface (`Teacher.complete(Request) -> str`), three kinds."""
from __future__ import annotations

from typing import Any

from .base import Request, Teacher, TeacherError, complete_all
from .rule import RuleTeacher

__all__ = ["Request", "RuleTeacher", "Teacher", "TeacherError", "complete_all", "make_teacher"]


def make_teacher(kind: str, **options: Any) -> Teacher:
    """'rule', 'openai' (options: model, base_url, concurrency, requests_per_minute, max_retries...)
    or 'local' (options: model_dir, max_new_tokens, temperature). Heavy imports only when used."""
    if kind == "rule":
        return RuleTeacher()
    if kind == "openai":
        from .openai_teacher import OpenAITeacher

        return OpenAITeacher(**options)
    if kind == "local":
        from .local import LocalTeacher

        return LocalTeacher(**options)
    raise ValueError(f"unknown teacher {kind!r}; choose rule, openai or local")
