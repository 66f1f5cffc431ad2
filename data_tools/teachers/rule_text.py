"""The rule teacher's instruction rewrites: Evol-Instruct's operations as fixed templates.

An LLM teacher does these far better; the templates let expansion run offline (the demo, the
tests) and keep every output traceable to its parent instruction."""
from __future__ import annotations

import random

CONSTRAINTS = (
    "Answer in no more than three sentences.",
    "Use a numbered list in your answer.",
    "Do not use the word 'very'.",
    "Give one concrete example.",
    "Write the answer for a ten-year-old.",
)
CONCRETE = ("for a small bakery", "in Python", "for a school trip", "on a rainy day", "for a team of five people")
BREADTH_TOPICS = ("gardening", "sorting algorithms", "personal budgeting", "the water cycle", "writing a cover letter",
                  "prime numbers", "time zones", "recycling plastics", "learning a new language", "unit conversion")
BREADTH_TASKS = ("Explain {t} to a beginner.", "List three common mistakes people make with {t}.",
                 "Write a short quiz question about {t}.", "Give a step-by-step plan for getting started with {t}.")


def evolve(instruction: str, operation: str, rng: random.Random) -> str:
    """Rewrite `instruction` by one operation; the reply is the new instruction text."""
    base = instruction.strip().rstrip(".")
    if operation == "constraint":
        return f"{base}. {rng.choice(CONSTRAINTS)}"
    if operation == "deepen":
        return f"{base}, and explain why this works and when it would not."
    if operation == "concretize":
        return f"{base} {rng.choice(CONCRETE)}."
    if operation == "reasoning":
        return f"{base}. Think it through step by step and show each step before the final answer."
    if operation in ("breadth", "variation"):
        return rng.choice(BREADTH_TASKS).format(t=rng.choice(BREADTH_TOPICS))
    raise ValueError(f"unknown operation {operation!r}")
