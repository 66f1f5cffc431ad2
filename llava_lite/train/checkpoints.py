"""Resumable checkpoints: `checkpoints/step-NNNNNNN/` under a run's output directory.

Each holds accelerate's state (the weights that train, optimizer, scheduler, RNG of every
process; frozen towers are referenced by the config, never copied), the resolved
config and the trainer's data position (`trainer_state.json`). It is written to a temporary
directory and renamed, so a checkpoint directory is always complete; the last K are kept.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from accelerate import Accelerator

from llava_lite.config import Config, save_config
from llava_lite.log import logger

STATE_NAME = "trainer_state.json"


def _steps(root: Path) -> list[Path]:
    return sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = [c for c in _steps(Path(output_dir, "checkpoints")) if (c / STATE_NAME).is_file()]  # complete ones
    return ckpts[-1] if ckpts else None


def clear_previous_run(output_dir: Path) -> None:
    """A new run in an old output directory replaces its checkpoints and metrics (main process only)."""
    if (output_dir / "checkpoints").exists():
        logger.info(f"replacing the checkpoints of a previous run in {output_dir}")
        shutil.rmtree(output_dir / "checkpoints")
    (output_dir / "metrics.jsonl").unlink(missing_ok=True)


def _fsdp(acc: Accelerator, stage: str):
    from accelerate.utils import DistributedType

    from llava_lite.train.distributed import fsdp_trained_only
    from llava_lite.train.stages import STAGES

    if acc.distributed_type != DistributedType.FSDP:
        return contextlib.nullcontext()
    return fsdp_trained_only(STAGES[stage].checkpoint_parts)


def save_checkpoint(acc: Accelerator, output_dir: Path, cfg: Config, state: dict) -> Path:
    step = state["step"]
    root = output_dir / "checkpoints"
    final, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    # DDP / one process: distributed.TrainedOnlyCheckpoints filters the model file; DeepSpeed is told;
    # FSDP writes the trained tensors of a gathered state dict (distributed.fsdp_trained_only).
    frozen = {"exclude_frozen_parameters": True} if acc.state.deepspeed_plugin is not None else {}
    with _fsdp(acc, cfg.train.stage):
        acc.save_state(str(tmp), **frozen)
    acc.wait_for_everyone()
    if acc.is_main_process:
        save_config(cfg, tmp / "config.json")
        (tmp / STATE_NAME).write_text(json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        keep = cfg.train.keep_last
        for old in _steps(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
    acc.wait_for_everyone()
    return final


def load_checkpoint(acc: Accelerator, ckpt: Path) -> dict:
    """Restore accelerate's state; returns the trainer state saved with it."""
    # DeepSpeed checkpoints leave frozen weights out (exclude_frozen_parameters): load the rest non-strictly
    frozen = {"load_module_strict": False} if acc.state.deepspeed_plugin is not None else {}
    with _fsdp(acc, json.loads((ckpt / "config.json").read_text())["train"]["stage"]):
        acc.load_state(str(ckpt), **frozen)
    return json.loads((ckpt / STATE_NAME).read_text())
