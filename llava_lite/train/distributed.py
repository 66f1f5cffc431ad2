"""What a multi-process run needs beyond one process: the launch itself, the same modules on every
rank, checkpoints of what trains, and saving from a gathered state dict.

- `prepare_launch_env()` before the Accelerator exists: a bare `torchrun` on a machine without
  CUDA sets WORLD_SIZE but not ACCELERATE_USE_CPU, and accelerate would then run N independent
  one-process copies racing on one output directory. We tell accelerate to form the gloo group.
  `check_launch(acc)` afterwards stops with one line if the launcher and accelerate still disagree.
- `run_vision_every_step(model)`: a text-only micro-batch still runs the vision tower and the
  projector on an empty image batch (no image compute, but every all-gather of a sharded engine
  and a gradient graph through the projector), so ranks never diverge in the modules they run.
- `TrainedOnlyCheckpoints`: accelerate's model file in a checkpoint holds only the parameters that
  train (and the trained parts' buffers); frozen towers are referenced by the run's config. Under
  FSDP `fsdp_trained_only` does the same from a gathered state dict; DeepSpeed gets
  exclude_frozen_parameters (checkpoints.py).
- `full_state_dict(acc, model)`: the whole model gathered on the main process (all ranks call it).
- `rescale_position`: a run resumed on another number of processes skips the same global batches;
  `check_stream_layout`: a shard stream resumed on another layout restarts its epoch.
- DeepSpeed: `fill_deepspeed_config` puts train.batch_size / grad_accum / max_grad_norm where the
  shipped zero configs say "auto" and makes the vision tower one ZeRO-3 leaf; `loss_scale`.
- `fsdp2_shard(model)`: torch's FSDP2 wrapping as configs/accelerate/fsdp2.yaml does it (for CPU tests).

Tested on CPU (tests/train/test_distributed.py): DDP through bare torchrun (gloo), FSDP2 and DeepSpeed
ZeRO-3 driven directly (accelerate enables FSDP and DeepSpeed only with GPUs).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from llava_lite.config import ConfigError
from llava_lite.log import logger

TRAINED_NAME = "model.safetensors"  # accelerate's name for model 0; it holds only trained tensors


def launcher_world_size() -> int:
    for key in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return 1


def prepare_launch_env() -> None:
    """On a CPU-only machine started by a launcher with WORLD_SIZE > 1, ask accelerate for gloo."""
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if launcher_world_size() > 1 and not torch.cuda.is_available() and not deepspeed:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def check_launch(acc) -> None:
    n = launcher_world_size()
    if n != acc.num_processes and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        raise ConfigError(f"the launcher started {n} processes but accelerate sees {acc.num_processes}: accelerate "
                          "cannot drive DeepSpeed without a GPU; on CPU use DDP (accelerate launch --cpu) or drive "
                          "DeepSpeed directly (tests/zero3_worker.py)")
    if n != acc.num_processes:
        raise ConfigError(
            f"the launcher started {n} processes (WORLD_SIZE) but accelerate sees {acc.num_processes}: each would "
            f"train alone; launch with `accelerate launch --num_processes {n} [--cpu] -m llava_lite.cli train ...` "
            "or torchrun with ACCELERATE_USE_CPU=true on CPU")


def run_vision_every_step(model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """A forward pre-hook on LlavaLite: a batch without images gets an empty [0, 3, H, W]
    pixel_values, which `LlavaLite.embed` runs through the vision tower and projector at the point
    where images would go, adding 0 x their output. Zero images cost no compute but keep every rank
    running the same modules in the same order (ZeRO-3 / FSDP all-gathers in step), give the
    projector a (zero) gradient on every rank (DDP needs no unused-parameter search), and keep a
    graph when every sample of a stage-1 micro-batch was truncated away."""
    size = model.vision.visual.image_size
    h, w = size if isinstance(size, (tuple, list)) else (size, size)

    def hook(module, args, kwargs):
        if len(args) < 3 and kwargs.get("pixel_values") is None:
            kwargs["pixel_values"] = torch.zeros(0, 3, h, w, device=module.projector_device())
        return args, kwargs

    return model.register_forward_pre_hook(hook, with_kwargs=True)


def skip_step(module: nn.Module) -> None:
    """The empty image batch gives the projector a zero gradient where it took no part. AdamW would
    still move it on such a step (its momentum), as it would not with no gradient at all: a step
    without any image on any process drops those gradients, so the optimizer leaves the projector
    alone, as a one-process run always did. (Sharded engines keep their own gradients.)"""
    for p in module.parameters():
        p.grad = None


def _strip(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def trained_keys(model: nn.Module, parts: tuple[str, ...]) -> set[str]:
    """State-dict keys a checkpoint must hold: trainable parameters and the trained parts' buffers.
    A tensor shared under two names (tied input and output embeddings) is held once, under its
    first name (safetensors refuses shared tensors; loading one name restores both)."""
    keys, seen = set(), set()
    for name, t in model.state_dict(keep_vars=True).items():
        name = _strip(name)
        ptr = t.data_ptr() if t.numel() else 0  # 0 also for sharded DTensors, which hold no storage of their own
        if ptr:
            if ptr in seen:
                continue
            seen.add(ptr)
        if isinstance(t, nn.Parameter) and t.requires_grad:
            keys.add(name)
        elif not isinstance(t, nn.Parameter) and name.split(".")[0] in parts:
            keys.add(name)  # a persistent buffer of a trained part
    return keys


class TrainedOnlyCheckpoints:
    """accelerate save/load pre-hooks that keep frozen weights out of checkpoints (DDP / one process).
    Loading checks that the file holds exactly the trained keys, loads them into the model and
    tells accelerate there is nothing left to load."""

    def __init__(self, acc, model: nn.Module, parts: tuple[str, ...]):
        self.model, self.parts = model, parts
        acc.register_save_state_pre_hook(self.save)
        acc.register_load_state_pre_hook(self.load)

    def save(self, models, weights, output_dir) -> None:
        for i, sd in enumerate(weights):
            keep = trained_keys(models[i], self.parts)
            weights[i] = {k: v for k, v in sd.items() if _strip(k) in keep}

    def load(self, models, input_dir) -> None:
        from safetensors.torch import load_file

        for model in models:
            path = Path(input_dir, TRAINED_NAME)
            state = {_strip(k): v for k, v in load_file(str(path)).items()}
            expected = trained_keys(model, self.parts)
            if set(state) != expected:
                missing, extra = sorted(expected - set(state))[:3], sorted(set(state) - expected)[:3]
                raise ConfigError(f"{path} holds {len(state)} tensors but this run trains {len(expected)}; "
                                  f"missing {missing}, extra {extra}; "
                                  "resume with the config that wrote the checkpoint, or train without --resume")
            target = model.module if hasattr(model, "module") else model
            missing, unexpected = target.load_state_dict(state, strict=False)
            assert not unexpected, unexpected
        models.clear()  # done: accelerate must not look for a full model file


def loss_scale(acc, grad_accum: int) -> float:
    """What the trainer multiplies loss_sum / (supervised tokens of the window, all processes) by:
    DDP averages gradients over processes, and DeepSpeed's engine also divides by its accumulation."""
    return acc.num_processes * (grad_accum if acc.state.deepspeed_plugin is not None else 1)


def rescale_position(state: dict, processes: int, files: bool) -> None:
    """`batches_in_epoch` counts one process's batches; files deal batch i of an epoch to process
    i % N, so N x that many batches of the epoch were taken. A run resumed on another number of
    processes skips the same global batches (and then, with the same global batch, continues the
    same training). Shard streams handle a changed layout themselves (the epoch restarts)."""
    before = state.get("processes", processes)
    state["processes"] = processes
    if before == processes or not files or not state["batches_in_epoch"]:
        return
    taken = state["batches_in_epoch"] * before
    if taken % processes:
        logger.info(f"the checkpoint took {taken} batches of epoch {state['epoch']} on {before} process(es), "
                    f"not a multiple of {processes}: the epoch restarts from its first batch")
        state["batches_in_epoch"] = 0
        return
    state["batches_in_epoch"] = taken // processes
    logger.info(f"resumed on {processes} process(es) after {before}: {taken} batches of epoch {state['epoch']} "
                "already taken")


def check_stream_layout(state: dict, stream) -> None:
    """A shard stream resumes exactly only with the same processes x readers; otherwise its epoch restarts."""
    if stream is None:
        return
    now = [stream.world_size, stream.readers]
    if state.get("stream_readers") != now and state["batches_in_epoch"]:
        logger.info(f"the checkpoint streamed with processes x readers = {state.get('stream_readers')}, "
                    f"this run with {now}: epoch {state['epoch']} restarts from its first batch")
        state["batches_in_epoch"] = 0
    state["stream_readers"] = now


def full_state_dict(acc, model: nn.Module) -> dict:
    """The full model's state dict on the main process, gathered under FSDP / ZeRO-3 (collective)."""
    return {_strip(k): v for k, v in acc.get_state_dict(model).items()}


def fill_deepspeed_config(acc, batch_size: int, grad_accum: int, max_grad_norm: float, model=None) -> None:
    """The shipped zero configs say "auto" for the micro-batch, accumulation and clipping: the run's
    train.* values go in here, so DeepSpeed's engine accumulates and clips as the trainer would.
    Under ZeRO-3 the vision tower of `model` becomes one leaf (see zero3_vision_leaf)."""
    plugin = acc.state.deepspeed_plugin
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    if model is not None and ds.get("zero_optimization", {}).get("stage") == 3:
        zero3_vision_leaf(model)
    for key, value in (("train_micro_batch_size_per_gpu", batch_size), ("gradient_accumulation_steps", grad_accum),
                       ("gradient_clipping", max_grad_norm)):
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    ds["train_batch_size"] = batch_size * grad_accum * acc.num_processes


def fsdp2_shard(model: nn.Module, layer_classes: tuple[str, ...] = ("LlamaDecoderLayer",)) -> nn.Module:
    """Shard a LlavaLite with torch's FSDP2 as configs/accelerate/fsdp2.yaml does through accelerate
    (TRANSFORMER_BASED_WRAP: one unit per decoder layer, the rest, vision tower and projector
    included, in the root unit). Used where accelerate cannot enable FSDP (CPU / gloo)."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module)
    return fully_shard(model)


def zero3_vision_leaf(model: nn.Module) -> None:
    """Under ZeRO-3 the vision tower is one leaf: its parameters are gathered together when it is
    called, so an empty image batch (which skips the ViT's blocks) still joins the same all-gather."""
    from deepspeed.utils import set_z3_leaf_modules

    set_z3_leaf_modules(model, [type(model.vision)])


def save_trained_sharded(model: nn.Module, out_dir, parts: tuple[str, ...]) -> None:
    """FSDP2: gather the full state dict on rank 0 (collective) and write only the trained tensors."""
    import torch.distributed as dist
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() == 0:
        keep = trained_keys(model, parts)
        save_file({k: v.contiguous() for k, v in full.items() if _strip(k) in keep}, str(Path(out_dir, TRAINED_NAME)))


def load_trained_sharded(model: nn.Module, in_dir, parts: tuple[str, ...]) -> None:
    """FSDP2: the trained tensors of a checkpoint back into the shards; frozen ones stay as loaded."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    state = load_file(str(Path(in_dir, TRAINED_NAME)))
    expected = trained_keys(model, parts)
    if {_strip(k) for k in state} != expected:
        raise ConfigError(f"{in_dir}/{TRAINED_NAME} does not hold the {len(expected)} tensors this run trains; "
                          "resume with the config that wrote the checkpoint, or train without --resume")
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True, strict=False))


@contextlib.contextmanager
def fsdp_trained_only(parts: tuple[str, ...]):
    """accelerate's save_state / load_state under FSDP write and read the model through these two
    functions instead of a sharded copy of every weight (GPU only: accelerate has no CPU FSDP)."""
    import accelerate.accelerator as accel

    saved = accel.save_fsdp_model, accel.load_fsdp_model
    accel.save_fsdp_model = lambda plugin, acc, model, out, *a, **k: save_trained_sharded(model, out, parts)
    accel.load_fsdp_model = lambda plugin, acc, model, in_dir, *a, **k: load_trained_sharded(model, in_dir, parts)
    try:
        yield
    finally:
        accel.save_fsdp_model, accel.load_fsdp_model = saved
