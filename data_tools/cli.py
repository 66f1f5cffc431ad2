"""`llava-lite data ...` / `python -m data_tools.cli ...`: thin argparse wrappers over the tools.

Each sub-command parses its arguments and calls one importable function. Under `main` the
exit code (0 ok, 1 problems found) is returned; mounted on another CLI, which only calls
`args.func(args)`, a non-zero code exits the process so `validate` still fails a script."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import commands as c
from .expand import OPERATIONS
from .formats import FORMATS

DESCRIPTION = ("Data tools: generate instruction data from captions and boxes, expand, tag, curate, convert, shard, "
               "mix, preference pairs.")


def _teacher_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("teacher")
    g.add_argument("--teacher", choices=["rule", "openai", "local"], default="rule",
                   help="rule: offline, grounded in the annotations; openai: any OpenAI-compatible endpoint "
                        "(OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_API_KEY); local: a transformers model directory")
    g.add_argument("--model", help="endpoint model name (default: $OPENAI_MODEL)")
    g.add_argument("--base-url", help="endpoint base URL (default: $OPENAI_BASE_URL)")
    g.add_argument("--model-dir", help="local teacher: a causal LM directory")
    g.add_argument("--concurrency", type=int, default=4, help="openai: requests in flight (default 4)")
    g.add_argument("--rpm", type=float, help="openai: at most this many requests per minute")
    g.add_argument("--max-retries", type=int, default=5, help="openai: retries on 429/5xx with backoff (default 5)")
    g.add_argument("--temperature", type=float,
                   help="sampling temperature (openai default 0.7, local default 0 = greedy)")
    g.add_argument("--max-new-tokens", type=int, default=1024, help="longest reply (default 1024)")
    g.add_argument("--journal", type=Path,
                   help="reply journal for resuming (default: OUT.partial.jsonl for paid teachers)")
    g.add_argument("--prompts", type=Path, help="folder of prompt files to use instead of data_tools/prompts")


Command = Callable[[argparse.Namespace], int]


def _exiting(func: Command) -> Command:
    def run(args: argparse.Namespace) -> int:
        code = func(args)
        if code:
            sys.exit(code)
        return code

    return run


def _commands(sub: argparse._SubParsersAction, mounted: bool = False) -> None:
    def _add(
        sub: argparse._SubParsersAction, name: str, func: Command, help: str, epilog: str = ""
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=_exiting(func) if mounted else func)
        return p

    p = _add(sub, "generate", c.generate_cmd,
             "Turn captions + boxes into LLaVA conversations (conversation, detail, reasoning).",
             "example:\n  llava-lite data generate --annotations world/instances_train.json "
             "--captions world/captions_train.json --out data/instruct.json --short-fraction 0.5")
    p.add_argument("--annotations", type=Path, required=True,
                   help="COCO instances JSON, or LLaVA caption/box text (.txt)")
    p.add_argument("--captions", type=Path, help="COCO captions JSON for the same images")
    p.add_argument("--out", type=Path, required=True, help="LLaVA JSON to write")
    p.add_argument("--rejects", type=Path, help="rejected replies, JSONL (default: OUT.rejects.jsonl)")
    p.add_argument("--kinds", default="conversation,detail,reasoning", help="comma list of kinds per image")
    p.add_argument("--short-fraction", type=float, default=0.0,
                   help="share of conversation records in single-word VQA style")
    p.add_argument("--per-type", type=int, default=1,
                   help="rule teacher: questions of each type (colour, shape, count, position, existence) per "
                        "conversation record; several short questions per record want data.sources[*].isolate_turns")
    p.add_argument("--limit", type=int, help="only the first N images")
    p.add_argument("--seed", type=int, default=0)
    _teacher_options(p)

    p = _add(sub, "expand", c.expand_cmd,
             "Grow a set of seed instructions (Self-Instruct variations, Evol-Instruct operations), filtered.")
    p.add_argument("--seeds", type=Path, required=True,
                   help=".txt (one per line), JSON list of strings, or a conversation file")
    p.add_argument("--n", type=int, required=True, help="how many new instructions")
    p.add_argument("--out", type=Path, required=True, help="JSON list of {instruction, operation, parent[, output]}")
    p.add_argument("--rejects", type=Path, help="default: OUT.rejects.jsonl")
    p.add_argument("--operations", default=",".join(OPERATIONS), help="comma list")
    p.add_argument("--batch", type=int, default=8, help="requests per round")
    p.add_argument("--max-rouge", type=float, default=0.7, help="reject above this ROUGE-L against the pool")
    p.add_argument("--answer", action="store_true", help="also ask the teacher to answer each (Alpaca records)")
    p.add_argument("--seed", type=int, default=0)
    _teacher_options(p)

    p = _add(sub, "tag", c.tag_cmd, "Tag each sample's skills and intents (InsTag style): JSONL of {id, source, tags}.")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--tagger", choices=["heuristic", "teacher"], default="heuristic")
    p.add_argument("--format", default="auto")
    _teacher_options(p)

    p = _add(sub, "report", c.report_cmd, "Counts, tag histogram and length histograms (PNG) for a data file.")
    p.add_argument("src", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tags", type=Path, help="tags JSONL from `tag` (default: heuristic tags)")
    p.add_argument("--format", default="auto")

    p = _add(sub, "select", c.select_cmd, "Pick N samples, most complex first and covering the most tags.")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--tags", type=Path, help="tags JSONL from `tag` (default: heuristic tags)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", default="auto")
    p.add_argument("--to", default="llava", choices=FORMATS)

    p = _add(sub, "convert", c.convert_cmd, "Convert between LLaVA JSON, ShareGPT, Alpaca and OpenAI messages JSONL.")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path, help="a .jsonl name writes one record per line")
    p.add_argument("--to", required=True, choices=FORMATS)
    p.add_argument("--from", dest="src_format", default="auto", choices=("auto", *FORMATS))
    p.add_argument("--image-folder", type=Path, help="where image paths in SRC are relative to (default: SRC's folder)")
    p.add_argument("--out-image-folder", type=Path, help="write image paths relative to this (default: --image-folder)")

    p = _add(sub, "validate", c.validate_cmd, "Report every bad record with file, line and reason; exit 1 if any.")
    p.add_argument("src", type=Path)
    p.add_argument("--format", default="auto")
    p.add_argument("--image-folder", type=Path)
    p.add_argument("--no-check-images", action="store_true", help="do not check that image files exist")
    p.add_argument("--check-images", action="store_true",
                   help="decode every image as training does (missing, empty, truncated, not an image)")
    p.add_argument("--allow-absolute-image-paths", action="store_true",
                   help="accept image paths outside --image-folder (as data.allow_absolute_image_paths)")

    p = _add(sub, "shards", c.shards_cmd, "Write webdataset shards (JSON + image bytes) from a conversation file.")
    p.add_argument("src", type=Path)
    p.add_argument("out_dir", type=Path)
    p.add_argument("--image-folder", type=Path)
    p.add_argument("--maxsize", default="256MB", help="bytes per shard, e.g. 500000, 64MB, 1GB")
    p.add_argument("--maxcount", type=int, default=100_000, help="samples per shard")

    p = _add(sub, "mix", c.mix_cmd, "Sample one epoch of a weighted mixture of sources.",
             "example:\n  llava-lite data mix --source general:3:gen.json --source code:1:code.jsonl "
             "--replay alpaca.json --replay-fraction 0.1 --epoch 0 --out epoch0.json")
    p.add_argument("--source", action="append", required=True, metavar="NAME:WEIGHT:PATH")
    p.add_argument("--replay", type=Path, help="general text data replayed against forgetting")
    p.add_argument("--replay-fraction", type=float, default=0.0)
    p.add_argument("--size", type=int, help="records per epoch (default: all sources together)")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curriculum", choices=["length", "tags"], help="order easy to hard by this score")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--to", default="llava", choices=FORMATS)

    p = _add(sub, "pairs", c.pairs_cmd, "Preference pairs: the model's own sampled answers, verified; hallucinations.",
             "example:\n  llava-lite data pairs data/instruct_train.json data/pairs.jsonl --model runs/stage2 "
             "--verifier reference --samples 4\n  (train on them: llava-lite train configs/dpo.yaml)")
    p.add_argument("src", type=Path, help="conversations: each record's first question is asked; its first answer, "
                                         "if any, is the reference")
    p.add_argument("out", type=Path, help="pairs JSONL (LLaVA-NeXT DPO records); OUT.report.json says what was kept")
    p.add_argument("--model", required=True, help="the model that samples (a llava-lite or llava-hf directory)")
    p.add_argument("--image-folder", type=Path, help="where SRC's image paths are relative to (default: SRC's folder)")
    p.add_argument("--format", default="auto")
    p.add_argument("--verifier", choices=["reference", "agreement", "judge"], default="reference",
                   help="reference: the record's answer is ground truth; agreement: the samples' majority; judge: an "
                        "OpenAI-compatible judge rates each sample (default reference)")
    p.add_argument("--samples", type=int, default=4, help="sampled answers per question (default 4)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--min-share", type=float, default=0.5, help="agreement: the majority's least share (default 0.5)")
    p.add_argument("--min-gap", type=float, default=3.0, help="judge: least rating gap, 1-10 scale (default 3)")
    p.add_argument("--judge", help="judge: the endpoint's model name ($OPENAI_API_KEY), or 'rule' (offline: a sample "
                                   "is rated 10 when it equals the reference, else 1)")
    p.add_argument("--judge-base-url", help="judge: the endpoint's base URL (default $OPENAI_BASE_URL)")
    p.add_argument("--annotations", type=Path, help="COCO instances or layout text for SRC's images: also write "
                                                  "hallucination pairs (POVID swaps, POPE-style yes/no)")
    p.add_argument("--existence", type=int, default=1, help="with --annotations: yes and no questions per image")
    p.add_argument("--no-self", action="store_true", help="only hallucination pairs; the model is not loaded")
    p.add_argument("--limit", type=int, help="only the first N records")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)

    p = _add(sub, "dedup", c.dedup_cmd, "Drop near-duplicate requests (ROUGE-L above a threshold, same images).")
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--max-rouge", type=float, default=0.7)
    p.add_argument("--format", default="auto")
    p.add_argument("--to", default="llava", choices=FORMATS)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Mount the tools as `data <command>` on another CLI's subparsers."""
    p = subparsers.add_parser(
        "data",
        help="data tools (generate, expand, tag, report, select, convert, validate, shards, mix, dedup, pairs)",
        description=DESCRIPTION,
    )
    p.set_defaults(func=lambda _args: (p.print_help(), 2)[1])
    _commands(p.add_subparsers(dest="data_command", metavar="COMMAND"), mounted=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_tools.cli", description=DESCRIPTION)
    _commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
