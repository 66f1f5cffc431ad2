"""The training recipe: one code path for stage 1 (align), stage 2 (instruct), text SFT and
preference training, on accelerate, unchanged under `accelerate launch` (DDP, FSDP2, DeepSpeed).

    Trainer(cfg, resume=True).run()        # = setup() -> train() -> finish()

setup: read and check every record (`data.loader.TrainData`), build the model, decide what trains
(`stages.py`), build the optimizer and schedule (`optim.py`), resume from the latest checkpoint.
train: optimizer steps over micro-batch windows. What a step minimises is the stage's objective
(objective.py), a sum over supervised tokens (or preference pairs): the micro-batches of one step
are fetched first, their count summed over the window and over all processes, and each micro-batch
contributes its sum / total. A short answer then weighs what its tokens weigh.
finish: a last checkpoint, the model directory, the resolved config, a summary and a loss plot.

`--resume` is exact: an epoch's batches depend only on (seed, epoch) and the process layout, so
a resumed run skips the batches of the current epoch already taken and goes on with the very
batch the uninterrupted run would have taken next.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, send_to_device, set_seed
from tqdm.auto import tqdm

from llava_lite.config import Config, ConfigError, save_config
from llava_lite.data.dataset import batch_rejects
from llava_lite.data.loader import TrainData
from llava_lite.data.templates import template_text
from llava_lite.errors import check_model_refs
from llava_lite.interop.sources import resolve
from llava_lite.log import logger
from llava_lite.model.lm import BF16_EMULATED, cpu_bf16_native
from llava_lite.train.build import build_model, reconcile_init_from
from llava_lite.train.checkpoints import clear_previous_run, latest_checkpoint, load_checkpoint, save_checkpoint
from llava_lite.train.distributed import (
    TrainedOnlyCheckpoints,
    check_launch,
    check_stream_layout,
    fill_deepspeed_config,
    full_state_dict,
    loss_scale,
    prepare_launch_env,
    rescale_position,
    run_vision_every_step,
    skip_step,
)
from llava_lite.train.metrics import MetricsLog, plot_losses, tracker_config, truncate_metrics
from llava_lite.train.objective import build_objective
from llava_lite.train.optim import build_optimizer, check_decay_ratio, cosine_with_warmup
from llava_lite.train.stages import STAGES, set_trainable


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg, self.resume, self.out = cfg, resume, Path(cfg.train.output_dir)
        self.stage = STAGES[cfg.train.stage]
        mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "no")
        # every trainable parameter gets a gradient on every process (run_vision_every_step, below)
        ddp = [DistributedDataParallelKwargs(find_unused_parameters=False)]
        # On CPU, bf16 autocast is ours, not accelerate's (fixed for the life of a process, and one process
        # may train a float32 stage after a bf16 one).
        prepare_launch_env()  # a bare torchrun on CPU: accelerate forms the gloo group
        self.acc = Accelerator(mixed_precision=mixed if torch.cuda.is_available() else "no", kwargs_handlers=ddp,
                               log_with=cfg.train.report_to or None, project_dir=str(self.out))
        check_launch(self.acc)
        cpu_bf16 = not torch.cuda.is_available() and mixed == "bf16"
        if cpu_bf16 and not cpu_bf16_native():
            logger.warning(f"model.dtype=bfloat16: {BF16_EMULATED}")
        self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cpu_bf16 else self.acc.autocast

    # ---- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, t, acc = self.cfg, self.cfg.train, self.acc
        set_seed(t.seed)
        if cfg.data.chat_template:  # a misspelt name or a missing .jinja: one line, before any data or weights
            template_text(cfg.data.chat_template)
        check_decay_ratio(t.decay_ratio)  # train.decay_ratio outside (0, 1]: one line there too
        mode = cfg.data.mode or self.stage.render_mode
        self.data = TrainData(cfg.data, batch_size=t.batch_size, seed=t.seed, mode=mode, images=self.stage.images,
                              group_by_length=t.group_by_modality_length, rank=acc.process_index,
                              world_size=acc.num_processes, pairs=self.stage.pairs)
        logger.info(f"stage {t.stage}: {acc.num_processes} process(es), device {acc.device}")
        check_model_refs(cfg)  # a missing path or an uncached hub id offline: one line, before any weights load
        source = resolve(cfg)  # model.init_from's layout, told once
        for note in reconcile_init_from(cfg, source):  # the run's model settings against it, before any weights
            logger.info(note)
        model = build_model(cfg, mode, source)
        self.counts = set_trainable(model, self.stage)
        if self.stage.images:  # text-only batches run the tower and projector on zero images
            run_vision_every_step(model)
        if t.gradient_checkpointing:
            model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for p in model.parameters():  # trainable weights stay fp32; frozen ones keep the load dtype
            if p.requires_grad:
                p.data = p.data.float()
        loader = self.data.build(model)
        eval_loader = self.data.build_eval(model)
        optimizer = build_optimizer(model, self.stage, t)
        # DeepSpeed's engine takes the micro-batch, accumulates and clips: train.* go into its config.
        fill_deepspeed_config(acc, t.batch_size, t.grad_accum, t.max_grad_norm, model)
        self.loss_scale = loss_scale(acc, t.grad_accum)
        if acc.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            TrainedOnlyCheckpoints(acc, model, self.stage.checkpoint_parts)
        if self.data.stream is None:
            self.model, self.optimizer, self.data.loader = acc.prepare(model, optimizer, loader)
        else:  # the stream splits itself by process; accelerate would dispatch or re-split it
            self.model, self.optimizer = acc.prepare(model, optimizer)
        self.eval_loader = acc.prepare(eval_loader) if eval_loader is not None else None
        # CE (+ KL to the starting model) or a preference loss; any reference is built before a checkpoint loads
        self.objective = build_objective(cfg, t.stage, acc.unwrap_model(self.model), acc)
        self.last_stats: dict[str, float] = {}
        self.total_steps = t.max_steps if t.max_steps > 0 else self._steps_for_epochs(t.epochs)
        logger.info(f"{self._epoch_steps(0)} optimizer steps per epoch, {self.total_steps} in all")
        self.scheduler = cosine_with_warmup(self.optimizer, round(t.warmup_ratio * self.total_steps), self.total_steps,
                                            decay_ratio=t.decay_ratio)
        acc.register_for_checkpointing(self.scheduler)
        self.state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "skipped": 0, "tokens": 0}
        stream = self.data.stream
        if stream is not None:
            self.state["stream_readers"] = [stream.world_size, stream.readers]
        ckpt = latest_checkpoint(self.out) if self.resume else None
        if ckpt is not None:
            self.state = load_checkpoint(acc, ckpt)
            logger.info(f"resumed from {ckpt} at step {self.state['step']}")
            truncate_metrics(self.out / "metrics.jsonl", self.state["step"])
            check_stream_layout(self.state, self.data.stream)
        else:
            if self.resume:
                logger.info(f"--resume: no checkpoint in {self.out / 'checkpoints'}, starting fresh")
            if acc.is_main_process:  # a later --resume can never pick up a step of the previous run
                clear_previous_run(self.out)
        rescale_position(self.state, acc.num_processes, self.data.stream is None)  # resume on N' processes
        self.data.rejects.start(self.out, self.state["step"], resume=ckpt is not None, main=acc.is_main_process)

    def _epoch_steps(self, epoch: int) -> int:
        return math.ceil(self.data.epoch_batches(epoch) / self.cfg.train.grad_accum)

    def _steps_for_epochs(self, epochs: float) -> int:
        """Optimizer steps in `epochs` epochs (2.5 = two whole epochs and half of the third)."""
        whole, frac = divmod(epochs, 1.0)
        total = sum(self._epoch_steps(e) for e in range(int(whole)))
        if frac:
            total += math.ceil(frac * self._epoch_steps(int(whole)))
        if total <= 0:
            raise ConfigError(f"train.epochs={epochs} with this data gives no optimizer step")
        return total

    def _epoch_iter(self, epoch: int, skip: int) -> Iterator[dict]:
        """The batches of `epoch` after the first `skip`, as an uninterrupted run would see them."""
        acc, data = self.acc, self.data
        if data.stream is not None:
            data.stream.set_epoch(epoch, skip)  # before iter(): workers copy the stream when they start
            batches = itertools.islice(iter(data.loader), data.stream.epoch_batches(epoch) - skip)
            return (send_to_device(b, acc.device) for b in batches)
        loader = acc.skip_first_batches(data.loader, skip) if skip else data.loader
        # accelerate re-seeds the sampler from its own per-loader iteration counter, which a resumed
        # run (or the one-off skipping loader) does not share: set both to the true epoch.
        loader.set_epoch(epoch)
        data.sampler.set_epoch(epoch)
        return iter(loader)

    # ---- train -----------------------------------------------------------------------------
    def run(self) -> Path:
        self.setup()
        self.train()
        return self.finish()

    def train(self) -> None:
        t, acc, st = self.cfg.train, self.acc, self.state
        self.out.mkdir(parents=True, exist_ok=True)
        if t.report_to:  # accelerate's trackers, under output_dir/logs/
            acc.init_trackers("logs", config=tracker_config(self.cfg))
        metrics = MetricsLog(self.out / "metrics.jsonl", enabled=acc.is_main_process, acc=acc)
        bar = tqdm(total=self.total_steps, initial=st["step"], disable=not acc.is_main_process, desc=f"{t.stage}")
        self.model.train()
        while st["step"] < self.total_steps:
            batches = self._epoch_iter(st["epoch"], st["batches_in_epoch"])
            while st["step"] < self.total_steps:
                window = [b for _, b in zip(range(t.grad_accum), batches)]
                if not window:
                    break
                t0 = time.perf_counter()
                loss, grad_norm, n_tokens = self._step(window)
                st["step"] += 1
                st["batches_in_epoch"] += len(window)
                st["skipped"] += sum(int(b["num_skipped"]) for b in window)
                # unreadable images etc. go to rejects.jsonl; too many stops the run (data.max_bad_fraction)
                self.data.rejects.update([r for b in window for r in batch_rejects(b)], st["step"], acc)
                real = sum(int(b["attention_mask"].sum()) for b in window)  # this process's non-padding positions
                seen = int(acc.reduce(torch.tensor(real, device=acc.device), "sum"))
                st["tokens"] += seen
                row = {"step": st["step"], "epoch": st["epoch"], "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm, self.objective.unit: n_tokens,
                       "tokens_per_s": seen / (time.perf_counter() - t0), "skipped_total": st["skipped"],
                       # share of computed positions that are padding (this process's micro-batches)
                       "padding_fraction": 1 - real / max(sum(b["attention_mask"].numel() for b in window), 1)}
                if self.eval_loader is not None and t.eval_every and st["step"] % t.eval_every == 0:
                    row["eval_loss"] = self.evaluate()
                row.update(self.last_stats)  # kl, or the preference rewards and log-probs (objective.py)
                metrics.write(row)
                bar.update(1)
                extra = {k.split("/")[-1][:3]: f"{row[k]:.3f}" for k in ("kl", "rewards/accuracies") if k in row}
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}", **extra)
                if t.save_every and st["step"] % t.save_every == 0 and st["step"] < self.total_steps:
                    self.save_checkpoint()
            else:  # the step budget ran out mid-epoch
                break
            st["epoch"] += 1
            st["batches_in_epoch"] = 0
        bar.close()
        metrics.close()
        if st["skipped"]:
            logger.info(f"skipped {st['skipped']} sample(s): answers truncated away (data.max_length="
                        f"{self.cfg.data.max_length}) or images that would not load; see {self.data.rejects.path}")

    def _step(self, window: list[dict]) -> tuple[float, float, int]:
        acc, model, objective = self.acc, self.model, self.objective
        local = [sum(objective.count(b) for b in window),
                 sum(0 if b.get("pixel_values") is None else b["pixel_values"].shape[0] for b in window)]
        total, images = acc.reduce(torch.tensor(local, device=acc.device), "sum").tolist()
        sums = {k: torch.zeros((), device=acc.device) for k in objective.keys}  # the same keys on every process
        for i, batch in enumerate(window):
            sync = contextlib.nullcontext() if i == len(window) - 1 else acc.no_sync(model)
            with sync, self.autocast():
                value, stats = objective(model, {k: v for k, v in batch.items() if k != "num_skipped"})
                acc.backward(value * self.loss_scale / max(total, 1))
            for k, v in stats.items():
                sums[k] = sums[k] + v
        reduced = acc.reduce(torch.stack(list(sums.values())), "sum").tolist()  # one all-reduce for every stat
        self.last_stats = {k: v / max(total, 1) for k, v in zip(sums, reduced)}
        loss = self.last_stats.pop("loss")
        if not images and acc.distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            skip_step(acc.unwrap_model(model).projector)  # no image on any process: the projector took no part
        trained = [p for p in model.parameters() if p.requires_grad]
        grad_norm = acc.clip_grad_norm_(trained, self.cfg.train.max_grad_norm)
        if total:  # a window whose answers were all truncated away updates nothing (the same on every process)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, float(grad_norm) if grad_norm is not None else float("nan"), total

    @torch.no_grad()
    def evaluate(self) -> float:
        """The objective's mean over the eval sources: per response token, or per pair."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.acc.device)
        n = torch.zeros((), device=self.acc.device)
        for batch in self.eval_loader:
            with self.autocast():
                _, stats = self.objective(self.model, {k: v for k, v in batch.items() if k != "num_skipped"},
                                          train=False)
            loss_sum += stats.get("loss", 0)
            n += self.objective.count(batch)
        self.model.train()
        return float(self.acc.reduce(loss_sum, "sum") / self.acc.reduce(n, "sum").clamp(min=1))

    # ---- finish ----------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        return save_checkpoint(self.acc, self.out, self.cfg, self.state)

    def finish(self) -> Path:
        """Last checkpoint (resumable), the model directory, the resolved config and a loss plot."""
        self.save_checkpoint()
        acc = self.acc
        state = full_state_dict(acc, self.model)  # every process joins the gather
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            model.save_pretrained(self.out, state_dict=state, lm_dtype=self.cfg.model.dtype)
            save_config(self.cfg, self.out / "config.json")
            summary = {"stage": self.cfg.train.stage, "trainable": self.counts, **self.state,
                       "rejects": self.data.rejects.summary()}
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2))
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png", title=f"{self.cfg.train.stage} loss")
        acc.wait_for_everyone()
        logger.info(f"saved model to {self.out}")
        return self.out
