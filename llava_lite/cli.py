"""`llava-lite` command line: train, chat, and the commands other modules register."""
from __future__ import annotations

import argparse
import os
import sys

from llava_lite.constants import MODEL_ARG


def _train(args: argparse.Namespace) -> None:
    from llava_lite.config import load_config
    from llava_lite.train.recipe import Trainer

    cfg = load_config(args.config, args.overrides)
    if getattr(args, "dry_run", False):  # config only, on the meta device: no weights load, nothing trains
        from llava_lite.train.dry_run import format_plan, plan

        print(format_plan(plan(cfg, args.engine, args.gpus), cfg))
        return
    Trainer(cfg, resume=args.resume).run()


def _chat(args: argparse.Namespace) -> None:
    from llava_lite.errors import check_ref

    check_ref(args.model, "--model")  # before anything loads: a missing directory is one line
    missing = [p for p in args.image if not os.path.isfile(p)]
    if missing:
        from llava_lite.data.conversation import DataError

        raise DataError(f"--image {missing[0]}: no such image file; check the path", "image file not found")
    from llava_lite.infer.cli_chat import run_chat

    run_chat(args)


def _eval(args: argparse.Namespace) -> None:
    import json

    from llava_lite.errors import check_ref
    from llava_lite.eval.evaluate import evaluate

    check_ref(args.model, "--model")
    check_ref(getattr(args, "base", None), "--base")
    judge = None
    if args.judge == "rule":
        from llava_lite.eval.judge import RuleJudge

        judge = RuleJudge()
    elif args.judge:  # any OpenAI-compatible endpoint; the key comes from OPENAI_API_KEY
        from llava_lite.infer.openai_client import OpenAITeacher

        judge = OpenAITeacher(model=args.judge, base_url=args.judge_base_url, concurrency=args.judge_concurrency,
                              requests_per_minute=args.judge_rpm, temperature=0.0, max_tokens=1024)
    report = evaluate(args.model, args.vqa, args.image_folder, args.instructions, args.instructions_format,
                      args.general, args.out, args.max_new_tokens, args.batch_size, pope=args.pope, mc=args.mc,
                      choice=args.choice, text_tasks=args.text_tasks, base=args.base, judge=judge,
                      judge_questions=args.judge_questions, judge_reference=args.judge_reference,
                      judge_max_new_tokens=args.judge_max_new_tokens, suffix=not args.no_suffix,
                      device=args.device, dtype=args.dtype)
    print(json.dumps(report, indent=2))


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device, e.g. cuda:0 (default: cuda when available, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weights dtype (default: the dtype the model was trained in)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-lite", description="LLaVA-style vision-language instruction tuning")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also LLAVA_LITE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a stage (align / instruct / text) from a YAML config",
                       description="Train from a YAML config; overrides like train.lr=2e-5 are cast to the "
                                   "field's type.")
    p.add_argument("config", help="YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5 data.max_length=1024")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    p.add_argument("--dry-run", action="store_true",
                   help="print trainable/frozen parameters per part and the estimated memory per GPU, then exit")
    p.add_argument("--engine", default="ddp", choices=["ddp", "zero2", "zero3", "fsdp2"], help="for --dry-run")
    p.add_argument("--gpus", type=int, default=1, help="for --dry-run: GPUs the engine shards over")
    p.set_defaults(func=_train)

    p = sub.add_parser("chat", help="chat with a trained model directory (REPL, or one answer with --prompt)")
    p.add_argument("--model", required=True, help=MODEL_ARG)
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--prompt", help="ask once, print the answer and exit (reads stdin when it is not a terminal)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    _device_args(p)
    p.set_defaults(func=_chat)

    p = sub.add_parser("eval", help="benchmarks, perplexities, judge; base vs tuned with --base",
                       description="Evaluate a llava-lite model directory; prints a JSON report.")
    p.add_argument("--model", required=True, help=MODEL_ARG)
    p.add_argument("--vqa", help="LLaVA question JSONL (question_id, image, text[, answer | answers, category])")
    p.add_argument("--image-folder", help="images for --vqa/--instructions (default: next to the file)")
    p.add_argument("--instructions", help="held-out conversations for response-token perplexity")
    p.add_argument("--instructions-format", default="auto")
    p.add_argument("--general", help="plain text file, one document per line, for general perplexity")
    p.add_argument("--out", help="directory for report.json (+ report.md with --base) and the answer files")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32, help="VQA questions decoded together (greedy)")
    _device_args(p)
    p.add_argument("--pope", help="POPE question JSONL (answer: yes/no): accuracy, precision, recall, F1, yes-ratio")
    p.add_argument("--mc", help="multiple-choice question JSONL (options + answer letter): letter accuracy")
    p.add_argument("--choice", help="JSONL of question, choices, answer[, image]: multiple choice by log-likelihood")
    p.add_argument("--text-tasks", help="held-out text conversations (any format) for text-task perplexity")
    p.add_argument("--no-suffix", action="store_true", help="do not append LLaVA's answer-format instruction")
    p.add_argument("--base", help="the base model (llava-lite dir or plain LM dir): same sets, table of deltas")
    p.add_argument("--judge", help="judge model name at --judge-base-url (key: OPENAI_API_KEY), or 'rule' (offline)")
    p.add_argument("--judge-base-url", help="OpenAI-compatible endpoint of the judge (default: OPENAI_BASE_URL)")
    p.add_argument("--judge-questions", help="question JSONL of open questions (optional annotation) to judge")
    p.add_argument("--judge-reference", help="a reference model's LLaVA answer JSONL: pairwise win rate against it")
    p.add_argument("--judge-max-new-tokens", type=int, default=256)
    p.add_argument("--judge-rpm", type=float, default=None, help="judge requests per minute (rate limit)")
    p.add_argument("--judge-concurrency", type=int, default=4)
    p.set_defaults(func=_eval)

    # Commands living in other modules; their parser modules import nothing heavy, so --help is fast.
    for module in ("llava_lite.demo.run", "data_tools.cli", "data_tools.improve", "llava_lite.serve.cli",
                   "llava_lite.interop.export", "llava_lite.bench.run"):
        _mount(sub, module)
    return parser


def _mount(sub, module: str) -> None:
    """Commands living in other modules register themselves with `add_parser(subparsers)`."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):  # that part of the package is not there
            return
        raise
    mod.add_parser(sub)


def error_line(e: BaseException) -> str | None:
    """The one line a user sees for an error they can fix (ours, a missing file, bad YAML); None for a bug."""
    import yaml

    from llava_lite.errors import LlavaLiteError

    if isinstance(e, LlavaLiteError):
        text = str(e)
    elif isinstance(e, OSError) and e.filename is not None and e.errno is not None:
        # FileNotFoundError, IsADirectoryError, PermissionError...: what, where, how to fix
        text = f"{e.strerror.lower()}: {e.filename}; check the path"
    elif isinstance(e, FileNotFoundError):
        text = str(e)
    elif isinstance(e, yaml.YAMLError):
        text = f"not valid YAML: {e}; fix the config file"
    else:
        return None
    if "Original Traceback" in text:  # re-raised from a DataLoader worker: keep the original error's line
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())  # one line, whatever the message held


def main(argv: list[str] | None = None) -> None:
    """Run a command. The package's own errors, missing files and bad YAML print one line,
    `error: <what>, <where>, <how to fix>`, and exit with code 2; `--debug` (anywhere on the line)
    or LLAVA_LITE_DEBUG=1 shows the traceback instead."""
    from llava_lite.log import setup

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    setup()  # the package logger: progress lines on stdout, main process only
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LLAVA_LITE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    args = build_parser().parse_args(argv)
    if debug:
        args.func(args)
        return
    try:
        args.func(args)
    except Exception as e:
        line = error_line(e)
        if line is None:
            raise
        _close_progress_bars()  # so the error starts on its own line
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


def _close_progress_bars() -> None:
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


if __name__ == "__main__":
    main(sys.argv[1:])
