"""`llava-lite export MODEL_DIR OUT --format hf-llava|llava-lite [--merge-lora]`.

hf-llava: a transformers directory (LlavaForConditionalGeneration + LlavaProcessor) that loads
without llava-lite; LoRA adapters are always merged into the LM first, since HF Llava holds plain
weights. llava-lite: the model directory again, with `--merge-lora` turning an `lm_adapter/` run
into a full `lm/` one (for serving without peft or as the base of a new run).

This module imports nothing heavy at import time, so `llava-lite --help` stays fast.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from llava_lite.config import ConfigError
from llava_lite.errors import FormatError
from llava_lite.log import logger

FORMATS = ("hf-llava", "llava-lite")


def merge_adapters(model) -> bool:
    """Fold LoRA adapters into the LM weights in place; True when there were any."""
    from llava_lite.model.lm import is_peft

    if not is_peft(model.lm):
        return False
    model.lm = model.lm.merge_and_unload()  # W + (alpha/r) * B @ A, adapters dropped
    model.lm.requires_grad_(False)
    model.lm_weights = "full"  # save_pretrained then writes lm/, not a reference to the base LM
    return True


def export(model_dir, out, fmt: str = "hf-llava", merge_lora: bool = False) -> Path:
    """Write the llava-lite model in `model_dir` to `out` in format `fmt`; returns `out`."""
    from llava_lite.model.llava import LlavaLite

    if fmt not in FORMATS:
        raise FormatError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.resolve() == Path(model_dir).resolve():
        raise ConfigError("export needs an output directory other than the model directory")
    model = LlavaLite.from_pretrained(model_dir).eval()
    if fmt == "hf-llava":
        from llava_lite.interop.hf_llava import write_hf_llava

        merge_adapters(model)
        return write_hf_llava(model, out)
    if merge_lora:
        merge_adapters(model)
    return model.save_pretrained(out)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `export` on the package CLI; the command runs `args.func(args)`."""
    p = subparsers.add_parser("export", help="write a model directory as a transformers llava-hf directory (or merged)",
                              description=__doc__.split("\n\n")[1])
    configure(p).set_defaults(func=run)
    return p


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a llava-lite model directory")
    p.add_argument("out", metavar="OUT", help="output directory (must be new or empty for hf-llava)")
    p.add_argument("--format", dest="fmt", choices=FORMATS, default="hf-llava", help="default %(default)s")
    p.add_argument("--merge-lora", action="store_true",
                   help="llava-lite format: merge LoRA adapters into full LM weights (hf-llava always merges)")
    return p


def run(args: argparse.Namespace) -> None:
    out = export(args.model_dir, args.out, args.fmt, merge_lora=args.merge_lora)
    logger.info(f"llava-lite export: {args.fmt} -> {out}")


def main(argv: list[str] | None = None) -> None:
    run(configure(argparse.ArgumentParser(prog="llava-lite export", description=__doc__)).parse_args(argv))
