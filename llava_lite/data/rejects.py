"""Bad records: counted per reason, reported together, written to `rejects.jsonl`, never silent.

Two kinds of defect reach a training run:
- structural ones (unknown role, empty answer, placeholder mismatch, a path outside the image
  folder...) are found when every source is read, before any weights load. `data.on_bad_record`
  decides: "error" stops with one line that counts them per reason and names the first few by
  file:line; "skip" drops them and writes them to `rejects.jsonl`.
- defects found when a sample is loaded (an image that is missing, empty, truncated or not an
  image; a sample that does not render; an answer truncated away by `data.max_length`) are
  always skipped: the dataset returns a skipped sample carrying its reason, the collator passes
  it on, and the trainer hands each step's rejects to `Rejects.update`, which writes each record
  once (however many epochs meet it) and stops the run once more than `data.max_bad_fraction` of
  the records are bad. Truncated answers are listed but not counted as bad data.

A reject is one `Reject`, made where the problem is found (the reader, the dataset, the mixture)
and written as it is: each row of rejects.jsonl is its fields {"id", "source", "reason", "kind",
"step", "message"}; source is "file:N" as everywhere in the data package (N: the index in a JSON
list, the line in JSONL); kind is "record" (structural), "image", "render" or "truncated"; step 0
for what was found up front.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llava_lite.data.conversation import DataError
from llava_lite.log import logger

FILE = "rejects.jsonl"
COUNTED = ("record", "image", "render")  # kinds that count as bad data against data.max_bad_fraction


@dataclass(frozen=True)
class Reject:
    """A record or sample that was not used; its fields, in this order, are a rejects.jsonl row."""

    id: str  # the record's id, "" when it has none
    source: str  # "file:N"
    reason: str  # the short label counted per reason (DataError.reason)
    kind: str  # "record", "image", "render" or "truncated"
    step: int  # the training step that found it; 0 when found up front
    message: str  # the whole one-line error

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


def _lines(path: str, upto: int) -> list[int]:
    """1-based line on which each of the first `upto + 1` elements of a JSON list starts."""
    text = Path(path).read_text(encoding="utf-8-sig")
    decoder, lines, pos = json.JSONDecoder(), [], text.index("[") + 1
    while len(lines) <= upto:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            break
        lines.append(text.count("\n", 0, pos) + 1)
        _, pos = decoder.raw_decode(text, pos)
    return lines


def file_lines(sources: list[str]) -> dict[str, str]:
    """"path:N" -> "path:LINE" for error messages: JSONL sources already hold the line, a JSON
    list's hold the record's index, which is looked up (each file read once, up to the last index)."""
    out = {s: s for s in sources}
    wanted: dict[str, list[str]] = {}
    for s in sources:
        path, _, n = s.rpartition(":")
        if n.isdigit():
            wanted.setdefault(path, []).append(s)
    for path, group in wanted.items():
        try:
            with open(path, encoding="utf-8-sig") as f:
                if f.read(4096).lstrip()[:1] != "[":
                    continue
            lines = _lines(path, max(int(s.rpartition(":")[2]) for s in group))
        except (OSError, ValueError):
            continue
        for s in group:
            n = int(s.rpartition(":")[2])
            out[s] = f"{path}:{lines[n]}" if n < len(lines) else s
    return out


def by_reason(rows: Iterable[Reject]) -> dict[str, int]:
    return dict(collections.Counter(r.reason for r in rows).most_common())


def describe(rows: list[Reject], first: int = 3) -> str:
    """"5 bad record(s) (2 empty answer, 1 unknown role, ...); first: a.json:7 (id='x'): empty answer, ..."""
    counts = ", ".join(f"{n} {reason}" for reason, n in by_reason(rows).items())
    where = file_lines([r.source for r in rows[:first]])
    named = "; ".join(where[r.source] + (f" (id={r.id!r})" if r.id else "") + f": {r.reason}" for r in rows[:first])
    return f"{len(rows)} bad record(s) ({counts}); first: {named}"


class Rejects:
    """The rejects of one training run: structural ones from the start, the rest as steps find them."""

    def __init__(self, structural: list[Reject], total: int, max_fraction: float):
        self.structural, self.total, self.max_fraction = structural, total, max_fraction
        self.found: list[Reject] = []  # found while training (distinct by source and reason)
        self.seen: set[tuple[str, str]] = set()
        self.path: Path | None = None
        self.main = True

    @property
    def rows(self) -> list[Reject]:
        return self.structural + self.found

    def bad(self) -> int:
        """Distinct bad records so far (structural + images + render failures, not truncation)."""
        return len({r.source for r in self.rows if r.kind in COUNTED})

    def check(self, latest: Reject | None = None) -> None:
        bad, total = self.bad(), max(self.total, 1)
        if bad / total <= self.max_fraction:
            return
        what = f"latest: {latest.message}" if latest else describe([r for r in self.rows if r.kind in COUNTED])
        where = f"; see {self.path}" if self.path else ""
        raise DataError(f"{bad} of {total} records are bad ({bad / total:.1%}), more than "
                        f"data.max_bad_fraction={self.max_fraction}; {what}{where}; "
                        "fix or drop those records, or raise data.max_bad_fraction", "too many bad records")

    def start(self, out_dir: str | os.PathLike, step: int, resume: bool, main: bool = True) -> None:
        """Open `out_dir/rejects.jsonl`: a fresh run writes the structural rejects; a resumed one
        keeps the rows found up to its checkpoint's `step` (later ones will be found again)."""
        self.path, self.main = Path(out_dir) / FILE, main
        self.found, self.seen = [], set()
        if resume and self.path.is_file():
            for line in self.path.read_text().splitlines():
                r = Reject(**json.loads(line)) if line.strip() else None
                if r and r.kind != "record" and r.step <= step and (r.source, r.reason) not in self.seen:
                    self.found.append(r)
                    self.seen.add((r.source, r.reason))
        if main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(FILE + ".tmp")
            tmp.write_text("".join(r.to_json() + "\n" for r in self.rows))
            os.replace(tmp, self.path)
        if self.structural and not resume:
            logger.info(f"data: skipped {describe(self.structural)}; all of them are in {self.path}")

    def update(self, rejects: list[Reject], step: int, acc=None) -> None:
        """Add one step's rejects (from every process when `acc` is given), write the new ones,
        and stop the run when too many records are bad. Every process reaches the same verdict."""
        new = [r for r in rejects if (r.source, r.reason) not in self.seen]
        if acc is not None and acc.num_processes > 1:
            import torch
            from accelerate.utils import gather_object

            if not int(acc.reduce(torch.tensor(len(new), device=acc.device), "sum")):
                return
            new = gather_object(new)
        fresh = []
        for r in new:
            key = (r.source, r.reason)
            if key not in self.seen:
                self.seen.add(key)
                fresh.append(dataclasses.replace(r, step=step))
        if not fresh:
            return
        self.found += fresh
        if self.main and self.path is not None:
            with open(self.path, "a") as f:
                f.writelines(r.to_json() + "\n" for r in fresh)
        counted = [r for r in fresh if r.kind in COUNTED]
        if counted:
            self.check(counted[-1])

    def summary(self) -> dict:
        """For train_summary.json: counts per kind and per reason."""
        rows = self.rows
        return {"file": str(self.path) if self.path else None, "bad_records": self.bad(), "records": self.total,
                "by_kind": dict(collections.Counter(r.kind for r in rows)), "by_reason": by_reason(rows)}
