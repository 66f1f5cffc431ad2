"""The bodies of the CLI sub-commands: argparse Namespace in, library calls, short report out."""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from llava_lite.data.readers import read_conversations
from llava_lite.infer.openai_client import Teacher

from .formats import write_conversations, write_records
from .teachers import make_teacher


def _log(msg: str) -> None:
    print(msg, file=sys.stderr)


def _teacher(args: argparse.Namespace) -> Teacher:
    if args.teacher == "openai":
        opts = {"model": args.model, "base_url": args.base_url, "concurrency": args.concurrency,
                "requests_per_minute": args.rpm, "max_retries": args.max_retries, "max_tokens": args.max_new_tokens}
        if args.temperature is not None:
            opts["temperature"] = args.temperature
        return make_teacher("openai", **opts)
    if args.teacher == "local":
        if not args.model_dir:
            raise SystemExit("--teacher local needs --model-dir")
        return make_teacher(
            "local", model_dir=args.model_dir, max_new_tokens=args.max_new_tokens, temperature=args.temperature or 0.0
        )
    return make_teacher("rule")


def _journal(args: argparse.Namespace, out: Path) -> Path | None:
    """Paid teachers journal every reply next to the output so an interrupted run resumes for free."""
    if args.journal is not None:
        return args.journal
    return None if args.teacher == "rule" else out.with_name(out.name + ".partial.jsonl")


def _write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def generate_cmd(args: argparse.Namespace) -> int:
    from .annotations import load_scenes
    from .formats import to_llava
    from .generate import generate

    if args.per_type != 1 and args.teacher != "rule":
        raise SystemExit("--per-type is a rule-teacher setting; an LLM teacher writes what its prompt asks for "
                         "(--prompts DIR)")
    if args.per_type < 1:
        raise SystemExit(f"--per-type must be >= 1, got {args.per_type}")
    scenes = load_scenes(args.annotations, args.captions)[: args.limit]
    result = generate(scenes, _teacher(args), [k.strip() for k in args.kinds.split(",") if k.strip()],
                      args.short_fraction, args.seed, _journal(args, args.out), args.prompts, args.per_type)
    write_records([to_llava(cv) for cv in result.conversations], args.out)
    _write_jsonl(result.rejects, args.rejects or args.out.with_name(args.out.name + ".rejects.jsonl"))
    _log(json.dumps({"images": len(scenes), **result.summary()}))
    return 0


def expand_cmd(args: argparse.Namespace) -> int:
    from .expand import answer_instructions, expand, load_seed_instructions
    from .filters import InstructionFilter

    if args.answer and args.teacher == "rule":
        raise SystemExit("--answer needs an LLM teacher (--teacher openai or local)")
    teacher, journal = _teacher(args), _journal(args, args.out)
    result = expand(load_seed_instructions(args.seeds), teacher, args.n, args.seed,
                    tuple(o.strip() for o in args.operations.split(",")), args.batch,
                    journal=journal, prompts_dir=args.prompts, filt=InstructionFilter(max_rouge=args.max_rouge))
    rows, rejects = result.instructions, result.rejects
    if args.answer:
        answered, failed = answer_instructions([r["instruction"] for r in rows], teacher, journal)
        by_q = {a["instruction"]: a for a in answered}
        rows = [{**by_q[r["instruction"]], **r} for r in rows if r["instruction"] in by_q]
        rejects += failed
    write_records(rows, args.out)
    _write_jsonl(rejects, args.rejects or args.out.with_name(args.out.name + ".rejects.jsonl"))
    _log(json.dumps({"new": len(rows), "rejects": len(rejects)}))
    return 0


def _tags(args: argparse.Namespace, convs: list) -> list[list[str]]:
    from .tagging import heuristic_tags

    if args.tags is None:
        return [heuristic_tags(cv) for cv in convs]
    rows = [json.loads(l) for l in args.tags.read_text().splitlines() if l.strip()]
    by_source = {r["source"]: r["tags"] for r in rows}
    return [by_source.get(cv.source) or heuristic_tags(cv) for cv in convs]  # untagged (rejected) ones fall back


def tag_cmd(args: argparse.Namespace) -> int:
    from .tagging import heuristic_tags, teacher_tags

    if args.tagger == "teacher" and args.teacher == "rule":
        raise SystemExit("--tagger teacher needs an LLM teacher (--teacher openai or local); or use --tagger heuristic")
    convs = read_conversations(args.src, args.format)
    rejects: list[dict] = []
    if args.tagger == "teacher":
        tags, rejects = teacher_tags(convs, _teacher(args), _journal(args, args.out), args.prompts)
    else:
        tags = [heuristic_tags(cv) for cv in convs]
    _write_jsonl(
        [{"id": cv.id, "source": cv.source, "tags": t} for cv, t in zip(convs, tags) if t is not None], args.out
    )
    if rejects:
        _write_jsonl(rejects, args.out.with_name(args.out.name + ".rejects.jsonl"))
    _log(json.dumps({"tagged": len(convs) - len(rejects), "rejects": len(rejects)}))
    return 0


def report_cmd(args: argparse.Namespace) -> int:
    from .report import write_report

    convs = read_conversations(args.src, args.format)
    summary = write_report(convs, _tags(args, convs), args.out_dir)
    _log(json.dumps({k: v for k, v in summary.items() if k != "tag_counts"}))
    return 0


def select_cmd(args: argparse.Namespace) -> int:
    from .tagging import diversity, select

    convs = read_conversations(args.src, args.format)
    tags = _tags(args, convs)
    chosen = select(tags, args.n, args.seed)
    write_conversations([convs[i] for i in chosen], args.out, args.to, Path(args.src).resolve().parent)
    _log(
        json.dumps(
            {
                "selected": len(chosen),
                "of": len(convs),
                "tags_covered": diversity([tags[i] for i in chosen]),
                "tags_total": diversity(tags),
            }
        )
    )
    return 0


def convert_cmd(args: argparse.Namespace) -> int:
    from .convert import convert

    stats = convert(args.src, args.dst, args.to, args.src_format, args.image_folder, args.out_image_folder)
    for message in [b.message for b in stats["bad"]] + [m for _, m in stats["skipped"]]:
        _log(f"skipped: {message}")
    _log(json.dumps({"read": stats["read"], "written": stats["written"]}))
    return 1 if stats["bad"] or stats["skipped"] else 0


def validate_cmd(args: argparse.Namespace) -> int:
    """Every bad record with file:line and reason, then the counts per reason; exit 1 if any (or if empty)."""
    from collections import Counter

    from .convert import validate

    decode = getattr(args, "check_images", False)
    good, problems = validate(args.src, args.format, args.image_folder, not args.no_check_images or decode, decode,
                              getattr(args, "allow_absolute_image_paths", False))
    for p in problems:
        print(p)
    counts = ", ".join(f"{n} {reason}" for reason, n in Counter(p.kind for p in problems).most_common())
    _log(f"{good} good record(s), {len(problems)} bad" + (f" ({counts})" if counts else "")
         + ("" if decode else "; images not decoded (--check-images decodes them as training does)"))
    return 1 if problems else 0


def parse_size(text: str) -> float:
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmg]?)i?b?\s*", text.lower())
    if not m:
        raise SystemExit(f"bad size {text!r}: use bytes or a number with KB, MB, GB")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]


def shards_cmd(args: argparse.Namespace) -> int:
    from .shards import write_shards

    paths = write_shards(args.src, args.out_dir, args.image_folder, parse_size(args.maxsize), args.maxcount)
    _log(json.dumps({"shards": len(paths), "first": str(paths[0]) if paths else None}))
    return 0


def mix_cmd(args: argparse.Namespace) -> int:
    from .mix import Source, mix_epoch

    sources = []
    for spec in args.source:
        name, weight, path = (spec.split(":", 2) + ["", ""])[:3]
        if not path:
            raise SystemExit(f"--source {spec!r}: expected NAME:WEIGHT:PATH")
        sources.append(Source(name, path=path, weight=float(weight)))
    replay = Source("replay", path=args.replay) if args.replay else None
    convs = mix_epoch(sources, args.seed, args.epoch, args.size, replay, args.replay_fraction, args.curriculum)
    write_conversations(convs, args.out, args.to, args.out.resolve().parent)
    _log(json.dumps({"records": len(convs), "epoch": args.epoch}))
    return 0


def dedup_cmd(args: argparse.Namespace) -> int:
    from .filters import dedup

    convs = read_conversations(args.src, args.format)
    kept, dropped = dedup(convs, args.max_rouge)
    write_conversations(kept, args.dst, args.to, Path(args.src).resolve().parent)
    for where, reason in dropped:
        _log(f"dropped {where}: {reason}")
    _log(json.dumps({"kept": len(kept), "dropped": len(dropped)}))
    return 0


def pairs_cmd(args: argparse.Namespace) -> int:
    from llava_lite.errors import check_ref

    from .pairs import hallucination_pairs, make_verifier, sample_answers, self_pairs

    check_ref(args.model, "--model")
    if args.samples < 2 and not args.no_self:
        raise SystemExit("--samples must be >= 2: a pair needs two different answers to pick from")
    folder = str(args.image_folder or args.src.parent)
    prompts = read_conversations(args.src, args.format, folder)[: args.limit]
    pairs, report = [], {"prompts": len(prompts)}
    if not args.no_self:
        verify = make_verifier(args.verifier, args.min_share, args.judge, args.min_gap, args.judge_base_url)
        from llava_lite.eval.compare import load_model
        from llava_lite.infer.chat import Assistant

        assistant = Assistant(load_model(args.model, device=args.device))
        answers = sample_answers(assistant, prompts, args.samples, args.temperature, args.top_p,
                                 args.max_new_tokens, args.batch_size, args.seed)
        own, reasons = self_pairs(prompts, answers, verify)
        pairs += own
        report["self"] = {"verifier": args.verifier, "samples": args.samples, "pairs": len(own), **reasons}
        report["distinct_answers_per_prompt"] = sum(len({a.strip().lower() for a in s}) for s in answers) / max(
            len(answers), 1)
    if args.annotations:
        from .annotations import load_scenes

        made, reasons = hallucination_pairs(prompts, load_scenes(args.annotations), folder, args.seed, args.existence)
        pairs += made
        report["hallucination"] = {"pairs": len(made), **reasons}
    skipped = write_conversations(pairs, args.out, "pairs", image_folder=folder)
    report["written"] = len(pairs) - len(skipped)
    report_path = args.out.with_name(args.out.name + ".report.json")
    report_path.write_text(json.dumps(report, indent=2))
    _log(f"{report['written']} pair(s) -> {args.out} ({report_path.name}: what each verifier kept and why not)")
    return 0
