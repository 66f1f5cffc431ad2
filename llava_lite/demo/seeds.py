"""`llava-lite demo --seeds N`: the demo over N base-LM seeds x N stage-training seeds, and its spread.

A demo's VQA is one draw: the LM's initialisation and stage training's seed move it by points, and whole
question types with it (issue 22). This runs every cell (`run_demo(lm_seed=i, train_seed=j)`) and reports
each cell, the mean and the range, overall and per question type. Layout under `out`:
  world/ tokenizer/ clip/ data/   built once, shared by every cell (symlinks in the cells)
  lm<i>/                          the LM of init seed i, shared by that row's cells
  lm<i>-train<j>/                 one demo (report.json, stage1/, stage2/, eval/); DONE.json when finished
  seeds.json, seeds.md            every cell and the spread
A finished cell is reused, so a killed grid resumes at the first unfinished cell.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from statistics import mean

from llava_lite.config import ConfigError
from llava_lite.demo.presets import finished, mark_finished, pretrained_lm, resolve
from llava_lite.log import logger

SHARED = ("world", "tokenizer", "clip", "data")


def cell_config(preset_name: str, lm_seed: int, train_seed: int) -> dict:
    """What a finished cell was made from: the preset's every number and the two seeds."""
    return {"preset": resolve(preset_name), "seeds": {"lm": lm_seed, "train": train_seed}}


def link_cell(out: Path, lm_seed: int, train_seed: int) -> Path:
    """The cell's folder, its shared inputs linked in (made on first use by whichever cell runs first)."""
    cell = out / f"lm{lm_seed}-train{train_seed}"
    cell.mkdir(parents=True, exist_ok=True)
    for name, target in [(n, out / n) for n in SHARED] + [("lm", out / f"lm{lm_seed}")]:
        target.mkdir(parents=True, exist_ok=True)
        link = cell / name
        if not link.is_symlink():
            link.symlink_to(target.resolve(), target_is_directory=True)
    return cell


def cell_row(report: dict) -> dict:
    """One cell's numbers: VQA on its own images and on another image, the gap, each per question type."""
    own, other = report["vqa_accuracy_by_type"], report["other_image_vqa_accuracy_by_type"]
    return {**report["seeds"], "vqa": report["vqa_accuracy"], "other": report["other_image_vqa_accuracy"],
            "gap": report["vqa_accuracy"] - report["other_image_vqa_accuracy"],
            "by_type": own, "gap_by_type": {t: own[t] - other[t] for t in own}}


def spread(rows: list[dict]) -> dict:
    """Mean, min, max and range (max - min) of VQA, other-image VQA, gap, and VQA per question type."""
    def stats(xs: list[float]) -> dict:
        return {"mean": mean(xs), "min": min(xs), "max": max(xs), "range": max(xs) - min(xs)}

    types = sorted(rows[0]["by_type"])
    return {**{k: stats([r[k] for r in rows]) for k in ("vqa", "other", "gap")},
            "by_type": {t: stats([r["by_type"][t] for r in rows]) for t in types}}


def table(rows: list[dict], summary: dict) -> str:
    """Markdown: one line per cell, then the mean and the range, in percent."""
    types = sorted(summary["by_type"])

    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = ["| LM seed | train seed | VQA | other image | gap | " + " | ".join(types) + " |",
             "|---" * (5 + len(types)) + "|"]
    lines += [f"| {r['lm']} | {r['train']} | {pct(r['vqa'])} | {pct(r['other'])} | {r['gap'] * 100:+.1f} | "
              + " | ".join(pct(r["by_type"][t]) for t in types) + " |" for r in rows]
    for stat in ("mean", "range"):
        gap = summary["gap"][stat] * 100
        cells = [pct(summary["vqa"][stat]), pct(summary["other"][stat]), f"{gap:+.1f}" if stat == "mean" else
                 f"{gap:.1f}"]
        cells += [pct(summary["by_type"][t][stat]) for t in types]
        lines.append(f"| **{stat}** | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_grid(preset_name: str, out: str | Path, n: int, run_demo: Callable[..., dict]) -> dict:
    """Every cell of the n x n grid (LM seeds 0..n-1 x training seeds 0..n-1), each by `run_demo` (demo/run.py's,
    handed in: that module's CLI calls this one), then seeds.json and seeds.md."""
    if n < 2:
        raise ConfigError(f"--seeds {n}: a spread needs at least 2 seeds of each kind; try --seeds 3")
    if pretrained_lm(resolve(preset_name)):
        raise ConfigError(f"--seeds varies the initialisation of the LM the demo builds; preset {preset_name} "
                          "takes a pretrained LM: use --preset fast or full")
    out = Path(out).resolve()
    rows = []
    for i in range(n):
        for j in range(n):
            cell, cfg = link_cell(out, i, j), cell_config(preset_name, i, j)
            if finished(cell, cfg) is None:
                logger.info(f"[seeds] cell {i * n + j + 1}/{n * n}: LM seed {i}, training seed {j}")
                run_demo(preset_name, cell, lm_seed=i, train_seed=j)
                mark_finished(cell, cfg, {})
            rows.append(cell_row(json.loads((cell / "report.json").read_text())))
    summary = {"preset": preset_name, "n": n, "cells": rows, "spread": spread(rows)}
    (out / "seeds.json").write_text(json.dumps(summary, indent=1))
    (out / "seeds.md").write_text(table(rows, summary["spread"]))
    print(table(rows, summary["spread"]))
    return summary
