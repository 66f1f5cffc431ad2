"""`llava-lite` command line: train, chat, and the commands other modules register."""
from __future__ import annotations

import argparse
import os
import sys


def _train(args: argparse.Namespace) -> None:
    from .config import load_config
    from .train import Trainer

    cfg = load_config(args.config, args.overrides)
    Trainer(cfg, resume=args.resume).run()


def _chat(args: argparse.Namespace) -> None:
    from .cli_chat import run_chat

    run_chat(args)


def _eval(args: argparse.Namespace) -> None:
    import json

    from .evaluate import evaluate

    report = evaluate(args.model, args.vqa, args.image_folder, args.instructions, args.instructions_format,
                      args.general, args.out, args.max_new_tokens, args.batch_size)
    print(json.dumps(report, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-lite", description="LLaVA-style vision-language instruction tuning")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a stage (align / instruct / text) from a YAML config",
                       description="Train from a YAML config; overrides like train.lr=2e-5 are cast to the field's type.")
    p.add_argument("config", help="YAML file (see configs/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5 data.max_length=1024")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in train.output_dir")
    p.set_defaults(func=_train)

    p = sub.add_parser("chat", help="chat with a trained model directory (REPL, or one answer with --prompt)")
    p.add_argument("--model", required=True, help="a llava-lite model directory")
    p.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--prompt", help="ask once, print the answer and exit (reads stdin when it is not a terminal)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.set_defaults(func=_chat)

    p = sub.add_parser("eval", help="VQA accuracy and perplexities of a model directory",
                       description="Evaluate a llava-lite model directory; prints a JSON report.")
    p.add_argument("--model", required=True)
    p.add_argument("--vqa", help="question JSONL (question_id, image, text, answer, category)")
    p.add_argument("--image-folder", help="images for --vqa/--instructions (default: next to the file)")
    p.add_argument("--instructions", help="held-out conversations for response-token perplexity")
    p.add_argument("--instructions-format", default="auto")
    p.add_argument("--general", help="plain text file, one document per line, for general perplexity")
    p.add_argument("--out", help="directory for report.json and vqa_answers.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=32, help="VQA questions decoded together (greedy)")
    p.set_defaults(func=_eval)

    # Commands living in other modules; their parser modules import nothing heavy, so --help is fast.
    for module in ("llava_lite.demo.run", "data_tools.cli", "llava_lite.serve.cli", "llava_lite.export"):
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


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
