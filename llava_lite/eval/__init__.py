"""Evaluation: `llava-lite eval` (evaluate.py), the field's formats and scorers (scorers.py,
benchmarks.py), multiple choice by log-likelihood (choice.py), base vs tuned (compare.py) and judged
answers (judge.py)."""
