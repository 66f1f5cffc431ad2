"""`llava-lite export MODEL_DIR OUT --format hf-llava|gguf|llava-lite [--merge-lora] [--outtype T]`.

hf-llava: a transformers directory (LlavaForConditionalGeneration + LlavaProcessor) that loads
without llava-lite; LoRA adapters are always merged into the LM first, since HF Llava holds plain
weights. gguf: llama.cpp's pair, OUT/<name>.gguf (the LM with its tokenizer and chat template, LoRA
merged) and OUT/mmproj-<name>.gguf (tower + projector), in f32, f16, bf16 or q8_0 (`--text-only`: the
LM alone). llava-lite: the model directory again, with `--merge-lora` turning an `lm_adapter/` run
into a full `lm/` one (for serving without peft or as the base of a new run).

This module imports nothing heavy at import time, so `llava-lite --help` stays fast.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from llava_lite.config import ConfigError
from llava_lite.errors import FormatError
from llava_lite.log import logger

FORMATS = ("hf-llava", "gguf", "llava-lite")
MEDIA_MARKER = "<__media__>"  # libmtmd's default image marker (mtmd_default_marker)


def merge_adapters(model) -> bool:
    """Fold LoRA adapters into the LM weights in place; True when there were any."""
    from llava_lite.model.lm import is_peft

    if not is_peft(model.lm):
        return False
    model.lm = model.lm.merge_and_unload()  # W + (alpha/r) * B @ A, adapters dropped
    model.lm.requires_grad_(False)
    model.lm_weights = "full"  # save_pretrained then writes lm/, not a reference to the base LM
    return True


def check_gguf_dir(model_dir: Path, outtype: str, text_only: bool) -> None:
    """What a model directory's config, LM config and tokenizer rule out for GGUF, before any weight loads."""
    from transformers import AutoConfig, AutoTokenizer

    from llava_lite.config import ModelConfig, from_dict
    from llava_lite.interop.gguf_lm import check_lm_config, tokenizer_fields
    from llava_lite.model.gguf import require_gguf
    from llava_lite.model.llava import read_meta, saved_config
    from llava_lite.model.lm import resolve_lm

    require_gguf()  # a BackendError naming `pip install llava-lite[gguf]`
    cfg = from_dict(ModelConfig, saved_config(read_meta(model_dir)))
    check_gguf_config(cfg, outtype, text_only)
    lm = model_dir / cfg.lm if (model_dir / cfg.lm).exists() else cfg.lm  # a trained LM is saved inside
    check_lm_config(AutoConfig.from_pretrained(resolve_lm(str(lm))))
    tok = AutoTokenizer.from_pretrained(model_dir / "tokenizer")
    tokenizer_fields(tok, len(tok))


def check_gguf_config(cfg, outtype: str, text_only: bool) -> None:
    """What the saved config alone rules out for GGUF."""
    from llava_lite.interop.gguf_lm import OUTTYPES
    from llava_lite.interop.gguf_mmproj import check_config

    if outtype not in OUTTYPES:
        raise FormatError(f"--outtype {outtype!r}: use one of {', '.join(OUTTYPES)}")
    if cfg.render_mode != "chat":
        raise FormatError("render_mode 'plain' (a stage-1 captioner) has no chat template for llama.cpp: "
                          "export the stage-2 model")
    if not text_only:
        check_config(cfg)


def write_gguf(model, out: Path, outtype: str = "f16", name: str = "model", text_only: bool = False) -> list[Path]:
    """llama.cpp's files for `model` (adapters merged first) in `out`: the LM, then the mmproj."""
    import re

    from llava_lite.data.render import end_of_turn_token
    from llava_lite.interop.gguf_lm import check_lm, write_lm
    from llava_lite.interop.gguf_mmproj import check_vision, padding_note, write_mmproj
    from llava_lite.interop.hf_llava import chat_template
    from llava_lite.model.gguf import require_gguf

    require_gguf()  # a BackendError naming `pip install llava-lite[gguf]`
    check_gguf_config(model.cfg, outtype, text_only)
    check_lm(model.lm)
    if not text_only:
        check_vision(model)  # before anything is written
        if note := padding_note(model):
            logger.warning(note)
    merge_adapters(model)
    tok = model.tokenizer
    # `{% generation %}` marks training spans for transformers; llama.cpp's template engines do not know it.
    template = re.sub(r"{%-?\s*(end)?generation\s*-?%}", "", chat_template(model, image=MEDIA_MARKER))
    eot = end_of_turn_token(tok) if tok.chat_template else None
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.gguf"] + ([] if text_only else [out / f"mmproj-{name}.gguf"])
    partial = [f.with_name(f".{f.name}.partial") for f in files]  # renamed into place once both are written
    try:
        write_lm(model.lm, tok, partial[0], outtype, template, name,
                 eot_token_id=tok.convert_tokens_to_ids(eot) if eot else None)
        if not text_only:
            write_mmproj(model, partial[1], outtype, name)
        for tmp, final in zip(partial, files):
            os.replace(tmp, final)
    finally:  # a failed or interrupted export leaves no half-written file behind
        for tmp in partial:
            tmp.unlink(missing_ok=True)
    return files


def export(model_dir, out, fmt: str = "hf-llava", merge_lora: bool = False, outtype: str = "f16",
           text_only: bool = False) -> Path:
    """Write the llava-lite model in `model_dir` to `out` in format `fmt`; returns `out`."""
    from llava_lite.model.llava import LlavaLite

    if fmt not in FORMATS:
        raise FormatError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.resolve() == Path(model_dir).resolve():
        raise ConfigError("export needs an output directory other than the model directory")
    if fmt == "gguf":
        check_gguf_dir(Path(model_dir), outtype, text_only)
    model = LlavaLite.from_pretrained(model_dir).eval()
    if fmt == "hf-llava":
        from llava_lite.interop.hf_llava import write_hf_llava

        merge_adapters(model)
        return write_hf_llava(model, out)
    if fmt == "gguf":
        write_gguf(model, out, outtype, name=Path(model_dir).resolve().name, text_only=text_only)
        return out
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
                   help="llava-lite format: merge LoRA adapters into full LM weights (hf-llava and gguf always merge)")
    p.add_argument("--outtype", choices=("f32", "f16", "bf16", "q8_0"), default="f16",
                   help="gguf: weight type of the matrices (norms and biases stay f32); default %(default)s")
    p.add_argument("--text-only", action="store_true", help="gguf: the LM alone, no mmproj (a text_sft model)")
    return p


def run(args: argparse.Namespace) -> None:
    out = export(args.model_dir, args.out, args.fmt, merge_lora=args.merge_lora, outtype=args.outtype,
                 text_only=args.text_only)
    logger.info(f"llava-lite export: {args.fmt} -> {out}")


def main(argv: list[str] | None = None) -> None:
    run(configure(argparse.ArgumentParser(prog="llava-lite export", description=__doc__)).parse_args(argv))
