"""The training loop: one code path for stage 1 (align), stage 2 (instruct) and text SFT, on
accelerate, unchanged under `accelerate launch` (DDP, FSDP2, DeepSpeed).

    Trainer(cfg, resume=True).run()

Gradient accumulation is weighted by supervised tokens: the micro-batches of one optimizer step
are fetched first, their supervised tokens summed over the window and over all processes, and
each micro-batch contributes loss_sum / total. A short answer then weighs what its tokens weigh.

Data. File sources form a mixture that is re-drawn every epoch from (train.seed, epoch)
(`llava_lite.mixture`); shard sources are streamed (`llava_lite.streaming`). Either way an
epoch's batches are a function of (seed, epoch) and the process layout alone, so `--resume`
is exact: it skips the batches of the current epoch already taken (files: the sampler's list;
shards: the skipped samples are read from the tars but not decoded) and goes on with the very
batch the uninterrupted run would have taken next. Steps per epoch come from the mixed epoch.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, send_to_device, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .config import Config, ConfigError, save_config
from .dataset import Collator, ConversationDataset
from .render import IGNORE
from .sampler import ModalityLengthBatchSampler
from .streaming import ShardStream
from .train_setup import (build_model, build_optimizer, check_data, cosine_with_warmup, load_eval, load_mixture,
                          set_trainable, shard_paths)

STATE_NAME = "trainer_state.json"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = sorted(Path(output_dir, "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    ckpts = [c for c in ckpts if (c / STATE_NAME).is_file()]  # only complete ones
    return ckpts[-1] if ckpts else None


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False):
        self.cfg = cfg
        self.resume = resume
        self.out = Path(cfg.train.output_dir)
        mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "no")
        # Stage 2 batches hold one modality, so a text-only batch on one process leaves the projector
        # without a gradient there while an image batch on another uses it: DDP has to look for
        # unused parameters, or its gradient all-reduce goes out of step across processes.
        ddp = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.train.stage == "instruct" else []
        # On CPU, bf16 autocast is ours, not accelerate's: its mixed precision setting is fixed for the
        # life of a process, and one process may train a float32 stage after a bf16 one.
        self.acc = Accelerator(mixed_precision=mixed if torch.cuda.is_available() else "no", kwargs_handlers=ddp)
        cpu_bf16 = not torch.cuda.is_available() and mixed == "bf16"
        self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if cpu_bf16 else self.acc.autocast
        self.log = self.acc.print

    # ---- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        cfg, t = self.cfg, self.cfg.train
        set_seed(t.seed)
        kind = check_data(cfg.data)
        self.log(f"stage {t.stage}: {self.acc.num_processes} process(es), device {self.acc.device}")
        model = build_model(cfg)
        self.counts = set_trainable(model, t.stage, log=self.log)
        if t.gradient_checkpointing:
            model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for p in model.parameters():  # trainable weights stay fp32; frozen ones keep the load dtype
            if p.requires_grad:
                p.data = p.data.float()
        self.stream: ShardStream | None = None
        self.batch_sampler: ModalityLengthBatchSampler | None = None
        if kind == "shards":
            self.loader = self._stream_loader(model)
        else:
            self.loader, self.batch_sampler = self._loader(model)
        self.eval_loader = None
        if cfg.data.eval_sources:
            self.eval_loader = self._eval_loader(model)
        optimizer = build_optimizer(model, cfg)
        plugin = self.acc.state.deepspeed_plugin
        if plugin is not None and plugin.is_auto("train_micro_batch_size_per_gpu"):
            # DeepSpeed reads the micro-batch from the loader's batch_size, which a batch sampler
            # (files) leaves None and a stream (not prepared) does not show it: say it here.
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = t.batch_size
        if self.stream is None:
            self.model, self.optimizer, self.loader = self.acc.prepare(model, optimizer, self.loader)
        else:  # the stream splits itself by process; accelerate would dispatch or re-split it
            self.model, self.optimizer = self.acc.prepare(model, optimizer)
        if self.eval_loader is not None:
            self.eval_loader = self.acc.prepare(self.eval_loader)
        self.steps_per_epoch = self._epoch_steps(0)
        self.total_steps = t.max_steps if t.max_steps > 0 else self._steps_for_epochs(t.epochs)
        self.log(f"{self.steps_per_epoch} optimizer steps per epoch, {self.total_steps} in all")
        self.scheduler = cosine_with_warmup(self.optimizer, round(t.warmup_ratio * self.total_steps), self.total_steps)
        self.acc.register_for_checkpointing(self.scheduler)
        self.state = {"step": 0, "epoch": 0, "batches_in_epoch": 0, "skipped": 0, "tokens": 0}
        if self.stream is not None:
            self.state["stream_readers"] = [self.stream.world_size, self.stream.readers]
        ckpt = latest_checkpoint(self.out) if self.resume else None
        if ckpt is not None:
            self.acc.load_state(str(ckpt))
            self.state = json.loads((ckpt / STATE_NAME).read_text())
            self.log(f"resumed from {ckpt} at step {self.state['step']}")
            _truncate_metrics(self.out / "metrics.jsonl", self.state["step"])
            self._check_stream_layout()
        else:
            if self.resume:
                self.log(f"--resume: no checkpoint in {self.out / 'checkpoints'}, starting fresh")
            self._start_fresh()

    def _start_fresh(self) -> None:
        """A new run in an old output directory replaces its checkpoints and metrics, so a later
        --resume can never pick up a step of the previous run."""
        if not self.acc.is_main_process:
            return
        if (self.out / "checkpoints").exists():
            self.log(f"replacing the checkpoints of a previous run in {self.out}")
            shutil.rmtree(self.out / "checkpoints")
        (self.out / "metrics.jsonl").unlink(missing_ok=True)

    def _dataset(self, model, conversations) -> ConversationDataset:
        cfg = self.cfg
        return ConversationDataset(
            conversations, model.tokenizer, model.vision.image_to_tensor,
            image_token_id=model.image_token_id, image_seq_len=model.image_seq_len,
            max_length=cfg.data.max_length, mode=cfg.data.mode, system_prompt=cfg.data.system_prompt,
        )

    def _loader(self, model) -> tuple[DataLoader, ModalityLengthBatchSampler]:
        """File sources: every record once in the dataset; the sampler asks the mixture for each
        epoch's draw, so an epoch's batches depend only on (train.seed, epoch)."""
        cfg = self.cfg
        mixture = load_mixture(cfg.data.sources, cfg.train.stage, cfg.train.seed, cfg.data.curriculum)
        self.log(f"data: {mixture.describe()}" + (f", curriculum {cfg.data.curriculum!r}" if cfg.data.curriculum else ""))
        ds = self._dataset(model, mixture.conversations)
        group = cfg.train.group_by_modality_length
        lengths = ds.lengths() if group else [0] * len(ds)
        has_image = ds.has_image() if group else [False] * len(ds)
        # A curriculum keeps the mixture's easy-to-hard order: batches are cut in order, not shuffled.
        sampler = ModalityLengthBatchSampler(lengths, has_image, cfg.train.batch_size, seed=cfg.train.seed,
                                             shuffle=cfg.data.curriculum is None, epoch_indices=mixture.epoch)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(model.tokenizer.pad_token_id),
                            num_workers=cfg.data.num_workers)
        return loader, sampler

    def _stream_loader(self, model) -> DataLoader:
        cfg = self.cfg
        shards = shard_paths(cfg.data.sources)
        self.stream = ShardStream(
            shards, self._dataset(model, []), batch_size=cfg.train.batch_size, seed=cfg.train.seed,
            shuffle_buffer=cfg.data.shuffle_buffer, rank=self.acc.process_index, world_size=self.acc.num_processes,
            num_workers=cfg.data.num_workers, text_only=cfg.train.stage == "text",
        )
        self.log(f"data: {len(self.stream)} samples streamed from {len(shards)} shard(s) by "
                 f"{self.acc.num_processes} process(es) x {self.stream.readers} reader(s); shuffle buffer "
                 f"{cfg.data.shuffle_buffer}; batches mix modalities (no length grouping for streams)")
        if self.stream.epoch_batches(0) == 0:
            raise ConfigError(f"{len(shards)} shard(s) cannot feed {self.acc.num_processes} process(es): some process "
                              "gets no shard; write more, smaller shards (llava-lite data shards --maxcount)")
        return DataLoader(self.stream, batch_size=cfg.train.batch_size, num_workers=cfg.data.num_workers,
                          collate_fn=Collator(model.tokenizer.pad_token_id))

    def _eval_loader(self, model) -> DataLoader:
        cfg = self.cfg
        ds = self._dataset(model, load_eval(cfg.data.eval_sources, cfg.train.stage))
        sampler = ModalityLengthBatchSampler(ds.lengths(), ds.has_image(), cfg.train.batch_size, shuffle=False)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=Collator(model.tokenizer.pad_token_id),
                          num_workers=cfg.data.num_workers)

    def _epoch_batches(self, epoch: int) -> int:
        """Batches this process takes in `epoch` (a mixture's epochs can differ by a batch or so)."""
        if self.stream is not None:
            return self.stream.epoch_batches(epoch)
        self.batch_sampler.set_epoch(epoch)
        return len(self.loader)

    def _epoch_steps(self, epoch: int) -> int:
        return math.ceil(self._epoch_batches(epoch) / self.cfg.train.grad_accum)

    def _steps_for_epochs(self, epochs: float) -> int:
        """Optimizer steps in `epochs` epochs (2.5 = two whole epochs and half of the third)."""
        whole, frac = divmod(epochs, 1.0)
        total = sum(self._epoch_steps(e) for e in range(int(whole)))
        if frac:
            total += math.ceil(frac * self._epoch_steps(int(whole)))
        if total <= 0:
            raise ConfigError(f"train.epochs={epochs} with this data gives no optimizer step")
        return total

    def _check_stream_layout(self) -> None:
        """A stream resumes exactly only with the same processes x readers; otherwise restart the epoch."""
        if self.stream is None:
            return
        now = [self.stream.world_size, self.stream.readers]
        if self.state.get("stream_readers") != now and self.state["batches_in_epoch"]:
            self.log(f"the checkpoint streamed with processes x readers = {self.state.get('stream_readers')}, this run "
                     f"with {now}: epoch {self.state['epoch']} restarts from its first batch")
            self.state["batches_in_epoch"] = 0
        self.state["stream_readers"] = now

    def _epoch_iter(self, epoch: int, skip: int) -> Iterator[dict]:
        """The batches of `epoch` after the first `skip`, as an uninterrupted run would see them."""
        acc = self.acc
        if self.stream is not None:
            self.stream.set_epoch(epoch, skip)  # before iter(): workers copy the stream when they start
            batches = itertools.islice(iter(self.loader), self.stream.epoch_batches(epoch) - skip)
            return (send_to_device(b, acc.device) for b in batches)
        loader = acc.skip_first_batches(self.loader, skip) if skip else self.loader
        # accelerate re-seeds the sampler from its own per-loader iteration counter, which a resumed
        # run (or the one-off skipping loader) does not share: set both to the true epoch.
        loader.set_epoch(epoch)
        self.batch_sampler.set_epoch(epoch)
        return iter(loader)

    # ---- train -----------------------------------------------------------------------------
    def run(self) -> Path:
        self.setup()
        self.train()
        return self.finish()

    def train(self) -> None:
        t, acc, st = self.cfg.train, self.acc, self.state
        self.out.mkdir(parents=True, exist_ok=True)
        metrics = open(self.out / "metrics.jsonl", "a") if acc.is_main_process else None
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
                seen = int(acc.reduce(torch.tensor(sum(int(b["attention_mask"].sum()) for b in window), device=acc.device), "sum"))
                st["tokens"] += seen
                row = {"step": st["step"], "epoch": st["epoch"], "loss": loss, "lr": self.scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm, "supervised_tokens": n_tokens,
                       "tokens_per_s": seen / (time.perf_counter() - t0), "skipped_total": st["skipped"]}
                if self.eval_loader is not None and t.eval_every and st["step"] % t.eval_every == 0:
                    row["eval_loss"] = self.evaluate()
                if metrics:
                    metrics.write(json.dumps(row) + "\n")
                    metrics.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{row['tokens_per_s']:.0f}")
                if t.save_every and st["step"] % t.save_every == 0 and st["step"] < self.total_steps:
                    self.save_checkpoint()
            else:  # the step budget ran out mid-epoch
                break
            st["epoch"] += 1
            st["batches_in_epoch"] = 0
        bar.close()
        if metrics:
            metrics.close()
        if st["skipped"]:
            self.log(f"skipped {st['skipped']} sample(s) whose answers were truncated away (data.max_length="
                     f"{self.cfg.data.max_length})")

    def _step(self, window: list[dict]) -> tuple[float, float, int]:
        acc, model = self.acc, self.model
        local = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in window)
        total = int(acc.reduce(torch.tensor(local, device=acc.device), "sum"))
        loss_sum = torch.zeros((), device=acc.device)
        for i, batch in enumerate(window):
            sync = contextlib.nullcontext() if i == len(window) - 1 else acc.no_sync(model)
            inputs = {k: v for k, v in batch.items() if k != "num_skipped"}
            with sync, self.autocast():
                out = model(**inputs)
                # DDP averages gradients over processes, hence the num_processes factor.
                acc.backward(out.loss_sum * acc.num_processes / max(total, 1))
            loss_sum += out.loss_sum.detach()
        grad_norm = acc.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], self.cfg.train.max_grad_norm)
        if total:  # a window whose answers were all truncated away updates nothing (the same on every process)
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss = float(acc.reduce(loss_sum, "sum")) / max(total, 1)
        return loss, float(grad_norm) if grad_norm is not None else float("nan"), total

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over the eval sources (response tokens only)."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.acc.device)
        n = torch.zeros((), device=self.acc.device)
        for batch in self.eval_loader:
            out = self.model(**{k: v for k, v in batch.items() if k != "num_skipped"})
            loss_sum += out.loss_sum
            n += out.num_tokens
        self.model.train()
        return float(self.acc.reduce(loss_sum, "sum") / self.acc.reduce(n, "sum").clamp(min=1))

    # ---- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """accelerate state (model, optimizer, scheduler, RNG of every process) + data position,
        written to a temporary directory and renamed: a checkpoint directory is always complete."""
        acc, step = self.acc, self.state["step"]
        root = self.out / "checkpoints"
        final, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            save_config(self.cfg, tmp / "config.json")
            (tmp / STATE_NAME).write_text(json.dumps(self.state))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            done = sorted(root.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
            for old in done[: -self.cfg.train.keep_last] if self.cfg.train.keep_last > 0 else []:
                shutil.rmtree(old)
        acc.wait_for_everyone()
        return final

    def finish(self) -> Path:
        """Last checkpoint (resumable), the model directory, the resolved config and a loss plot."""
        self.save_checkpoint()
        acc = self.acc
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            model.save_pretrained(self.out)
            save_config(self.cfg, self.out / "config.json")
            summary = {"stage": self.cfg.train.stage, "trainable": self.counts, **self.state}
            (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2))
            plot_losses(self.out / "metrics.jsonl", self.out / "loss.png", title=f"{self.cfg.train.stage} loss")
        acc.wait_for_everyone()
        self.log(f"saved model to {self.out}")
        return self.out


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after the checkpoint we resume from; they will be logged again."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(line + "\n" for line in rows if json.loads(line)["step"] <= step))


def plot_losses(metrics_path: Path, png: Path, title: str = "loss") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train")
    evals = [r for r in rows if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (response tokens)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)

