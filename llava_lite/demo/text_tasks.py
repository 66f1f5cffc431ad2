"""A deterministic text-only instruction set, so the demo exercises the no-image path too.

Four task types with short answers that are exactly right by construction: arithmetic, string
manipulation, list manipulation and tiny Python expressions. `make_text_tasks(n, seed)` draws
`n` distinct tasks; `write_text_tasks` writes disjoint train/test splits in Alpaca JSON
(`instruction`, `input`, `output`, plus `type`).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

WORDS = (
    "apple", "banana", "cherry", "grape", "lemon", "mango", "melon", "peach", "pear", "plum",
    "cat", "dog", "horse", "mouse", "tiger", "zebra", "eagle", "shark", "whale", "otter",
    "house", "table", "chair", "window", "garden", "river", "mountain", "forest", "island", "bridge",
    "circle", "square", "triangle", "star", "cross", "diamond", "red", "green", "blue", "yellow",
    "purple", "orange", "small", "large", "left", "right", "top", "bottom", "center", "shape",
    "python", "code", "list", "number", "letter", "word", "string", "robot", "planet", "rocket",
    "music", "paper", "pencil", "basket", "candle", "doctor", "engine", "friend", "jacket", "kitten",
)
TYPES = ("arithmetic", "string", "list", "code")


def _nums(rng: random.Random, k: int, lo: int = 0, hi: int = 20) -> list[int]:
    return [rng.randint(lo, hi) for _ in range(k)]


def _arithmetic(rng: random.Random) -> tuple[str, str]:
    op = rng.choice("+-*")
    if op == "*":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
    else:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        if op == "-" and rng.random() < 0.7:
            a, b = max(a, b), min(a, b)  # mostly non-negative results, a few negatives
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    word = {"+": "plus", "-": "minus", "*": "times"}[op]
    q = rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"What is {a} {word} {b}?",
                    f"Calculate {a} {op} {b} and give only the number."])
    return q, str(result)


def _string(rng: random.Random) -> tuple[str, str]:
    w = rng.choice(WORDS)
    kind = rng.randrange(6)
    if kind == 0:
        return rng.choice([f"Reverse the word '{w}'.", f"Write '{w}' backwards."]), w[::-1]
    if kind == 1:
        return rng.choice([f"Write the word '{w}' in uppercase.", f"Convert '{w}' to capital letters."]), w.upper()
    if kind == 2:
        asked = rng.choice([f"How many letters are in the word '{w}'?", f"What is the length of the word '{w}'?"])
        return asked, str(len(w))
    if kind == 3:
        c = rng.choice(sorted(set(w)) + ["a", "e", "o"])
        return f"How many times does the letter '{c}' appear in '{w}'?", str(w.count(c))
    if kind == 4:
        return rng.choice([f"What is the first letter of '{w}'?", f"Which letter does '{w}' start with?"]), w[0]
    return rng.choice([f"What is the last letter of '{w}'?", f"Which letter does '{w}' end with?"]), w[-1]


def _fmt(xs: list[int]) -> str:
    return ", ".join(map(str, xs))


def _list(rng: random.Random) -> tuple[str, str]:
    xs = _nums(rng, rng.randint(3, 6), 0, 50)
    kind = rng.randrange(5)
    if kind == 0:
        return f"Sort these numbers in ascending order: {_fmt(xs)}.", _fmt(sorted(xs))
    if kind == 1:
        return f"Sort these numbers from largest to smallest: {_fmt(xs)}.", _fmt(sorted(xs, reverse=True))
    if kind == 2:
        asked = rng.choice([f"What is the largest number in [{_fmt(xs)}]?", f"Find the maximum of {_fmt(xs)}."])
        return asked, str(max(xs))
    if kind == 3:
        asked = rng.choice([f"What is the smallest number in [{_fmt(xs)}]?", f"Find the minimum of {_fmt(xs)}."])
        return asked, str(min(xs))
    return f"How many items are in the list [{_fmt(xs)}]?", str(len(xs))


def _code(rng: random.Random) -> tuple[str, str]:
    """A tiny Python expression and its value, computed here (the tests check it with eval)."""
    xs = _nums(rng, rng.randint(2, 5), 0, 9)
    w = rng.choice(WORDS)
    a, b = rng.randint(1, 20), rng.randint(1, 9)
    kind = rng.randrange(7)
    expr, value = [
        (f"len([{_fmt(xs)}])", len(xs)),
        (f"sum([{_fmt(xs)}])", sum(xs)),
        (f"max([{_fmt(xs)}])", max(xs)),
        (f"'{w}'.upper()", w.upper()),
        (f"len('{w}')", len(w)),
        (f"{a} // {b}", a // b),
        (f"{a} % {b}", a % b),
    ][kind]
    q = rng.choice([f"What does the Python expression `{expr}` evaluate to?",
                    f"Evaluate this Python expression: {expr}", f"What is the value of `{expr}` in Python?"])
    return q, repr(value) if isinstance(value, str) else str(value)


_MAKERS = {"arithmetic": _arithmetic, "string": _string, "list": _list, "code": _code}


def make_text_tasks(n: int, seed: int = 0) -> list[dict]:
    """`n` distinct tasks (no instruction twice), types in rotation; a pure function of (n, seed)."""
    rng, out, seen = random.Random(seed), [], set()
    while len(out) < n:
        kind = TYPES[len(out) % len(TYPES)]
        instruction, output = _MAKERS[kind](rng)
        if instruction in seen:
            continue
        seen.add(instruction)
        out.append({"instruction": instruction, "output": output, "type": kind})
    return out


def write_alpaca(tasks: list[dict], path: str | Path) -> None:
    rows = [{"instruction": t["instruction"], "input": "", "output": t["output"], "type": t["type"]} for t in tasks]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(path)


def write_text_tasks(out_dir: str | Path, n_train: int, n_test: int, seed: int = 0) -> dict[str, Path]:
    """`out_dir/text_tasks/{train,test}.json` (Alpaca); the test instructions never occur in train."""
    tasks = make_text_tasks(n_train + n_test, seed)
    rng = random.Random(seed + 1)
    rng.shuffle(tasks)
    paths = {s: Path(out_dir) / "text_tasks" / f"{s}.json" for s in ("train", "test")}
    write_alpaca(tasks[:n_train], paths["train"])
    write_alpaca(tasks[n_train:], paths["test"])
    return paths
