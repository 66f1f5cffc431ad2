"""The self-improvement loop (`llava-lite improve CONFIG --rounds K`), with guards against collapse.

Each round k, from the model of round k-1 (round 0: `model`):
  1. generate: draw `per_round` new prompts from the pool: its questions, or (questions: captions) a
     question about what the model's own description of the image names (questions.py); the model
     samples `samples` answers to each (pairs.py);
  2. filter: a verifier accepts an answer (kept to train on) and, where it also finds a worse one,
     a preference pair; kept records that repeat a kept request about the same image (ROUGE-L above
     `max_rouge`, data_tools/filters.py) are dropped; the kept set's diversity is measured
     (data_tools/diversity.py);
  3. retrain: SFT on the kept records (+ `replay` sources), DPO on the pairs, or both, starting
     from the previous round's model;
  4. evaluate on the held-out sets (VQA, POPE, general-text perplexity).

Every round writes round-K/ (data.json, pairs.jsonl, its models, eval.json, row.json) and a row of
rounds.jsonl / rounds.md. The loop stops when the held-out `metric` has not improved for `patience`
rounds, when the kept data's `diversity_metric` falls below `diversity_floor` (the mode-collapse
guard, checked before training on it), or when the pool runs out. A killed loop resumes at its
round: finished rounds are read back, a round's data is reused once written, and its training
resumes from its checkpoints.
"""
from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Optional

import yaml

from llava_lite.config import ConfigError, SourceConfig, from_dict
from llava_lite.log import logger


@dataclass
class ImproveConfig:
    model: str  # round 0: a llava-lite model directory
    prompts: str  # the unlabelled pool: conversations whose first question is asked (any reader format)
    out: str = "runs/improve"
    image_folder: Optional[str] = None  # of `prompts` (default: its folder)
    rounds: int = 3
    per_round: int = 200  # prompts drawn per round, never the same one twice
    # pool: ask the pool's questions; captions: the model describes each pool image and is asked a
    # question about an object its own description names (self-instruct over captions, questions.py)
    questions: Literal["pool", "captions"] = "pool"
    samples: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 32
    verifier: Literal["agreement", "reference", "judge"] = "agreement"
    judge: Optional[str] = None  # verifier judge: an endpoint model name, or "rule"
    min_share: float = 0.75  # agreement: the majority's least share
    objective: Literal["sft", "dpo", "both"] = "sft"
    sft_config: str = "configs/stage2.yaml"
    sft_overrides: list[str] = field(default_factory=list)
    dpo_config: str = "configs/dpo.yaml"
    dpo_overrides: list[str] = field(default_factory=list)
    replay: list[SourceConfig] = field(default_factory=list)  # trained on beside each round's own data (SFT)
    max_rouge: float = 0.7
    diversity_metric: Literal["answer_entropy", "distinct_1", "distinct_2", "tag_coverage"] = "answer_entropy"
    diversity_floor: float = 1.0
    vqa: Optional[str] = None  # held-out sets (llava-lite eval's): at least one
    pope: Optional[str] = None
    general: Optional[str] = None
    eval_image_folder: Optional[str] = None
    metric: str = "vqa_accuracy"  # the held-out figure the stop rule watches (higher is better)
    patience: int = 1
    min_gain: float = 0.0
    seed: int = 0


def load_improve_config(path: str | Path, overrides: list[str] = ()) -> ImproveConfig:
    from llava_lite.config import apply_override

    raw = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    for o in overrides:
        apply_override(raw, o)
    for key in ("model", "prompts"):
        if key not in raw:
            raise ConfigError(f"{path}: {key!r} is missing; see configs/improve.yaml")
    cfg = from_dict(ImproveConfig, raw)
    if not (cfg.vqa or cfg.pope):
        raise ConfigError(f"{path}: give a held-out 'vqa' or 'pope' set; the loop stops on held-out quality")
    if cfg.per_round < 1 or cfg.samples < 2:
        raise ConfigError(f"{path}: per_round must be >= 1 and samples >= 2")
    return cfg


def rounds_without_gain(values: list[float | None], min_gain: float = 0.0) -> int:
    """Rounds since the best value (a value counts as better only by more than min_gain)."""
    best, since = None, 0
    for v in values:
        gain = v is not None and (best is None or v > best + min_gain)
        best, since = (v, 0) if gain else (best, since + 1)
    return since


class Loop:
    def __init__(self, cfg: ImproveConfig):
        from llava_lite.data.readers import read_conversations
        from llava_lite.errors import check_ref

        check_ref(cfg.model, "model")  # every path, before anything loads
        named = {k: getattr(cfg, k) for k in ("prompts", "sft_config", "dpo_config", "vqa", "pope", "general")}
        named |= {f"replay[{i}].path": r.path for i, r in enumerate(cfg.replay)}
        missing = [(k, v) for k, v in named.items() if v and not Path(v).exists()]
        if missing:
            raise ConfigError(f"improve config: {missing[0][0]}={missing[0][1]!r}: no such file; fix the path "
                              f"(relative paths are relative to the current directory, {Path.cwd()})")

        self.cfg, self.out = cfg, Path(cfg.out)
        self.folder = cfg.image_folder or str(Path(cfg.prompts).parent)
        pool = read_conversations(cfg.prompts, image_folder=self.folder)
        random.Random(cfg.seed).shuffle(pool)
        from .pairs import make_verifier

        self.pool, self.verify = pool, make_verifier(cfg.verifier, cfg.min_share, cfg.judge)
        self.rows = self._finished()
        saved = self.out / "config.json"
        if self.rows and saved.is_file():  # a resumed loop must be the same loop
            before = json.loads(saved.read_text())
            changed = [k for k in ("model", "prompts", "questions", "verifier", "objective", "per_round", "seed")
                       if before.get(k) != asdict(cfg)[k]]
            if changed:
                raise ConfigError(f"{self.out} holds rounds of a loop with other {changed} ({before[changed[0]]!r}); "
                                  "give another out, or delete it to start over")
        self.out.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(asdict(cfg), indent=2, default=str))

    def _finished(self) -> list[dict]:
        rows, k = [], 0
        while (self.out / f"round-{k}" / "row.json").is_file():
            rows.append(json.loads((self.out / f"round-{k}" / "row.json").read_text()))
            k += 1
        if rows:
            logger.info(f"improve: rounds 0-{k - 1} already done in {self.out}; resuming at round {k}")
        return rows

    def run(self, rounds: int | None = None) -> list[dict]:
        rounds = self.cfg.rounds if rounds is None else rounds
        if not self.rows:
            self._finish(0, self.cfg.model, {}, None)
        while len(self.rows) <= rounds and not self.rows[-1].get("stop"):
            k = len(self.rows)
            start = self.rows[-1]["model"]
            data = self.generate(k, start)
            stop = self._diversity_stop(data)
            model = start if stop else self.retrain(k, start, data)
            self._finish(k, model, data, stop)
        if len(self.rows) > rounds and not self.rows[-1].get("stop"):
            self.rows[-1]["stop"] = f"{rounds} round(s) done"
        self._table()
        return self.rows

    # ---- the steps of a round -------------------------------------------------------------
    def generate(self, k: int, model_dir: str) -> dict:
        from llava_lite.eval.compare import load_model
        from llava_lite.infer.chat import Assistant

        from .diversity import diversity
        from .formats import write_conversations
        from .pairs import pair, prompt_of, sample_answers, verdicts

        d = self.out / f"round-{k}"
        if (d / "generation.json").is_file():  # written last: the round's data is complete
            return json.loads((d / "generation.json").read_text())
        n = self.cfg.per_round
        prompts = self.pool[(k - 1) * n:k * n]
        if not prompts:
            return {"stop": "the prompt pool is used up", "kept": 0}
        assistant = Assistant(load_model(model_dir))
        images, captions = len(prompts), []
        if self.cfg.questions == "captions":
            from .questions import own_prompts

            prompts, captions = own_prompts(assistant, prompts, random.Random(self.cfg.seed + k))
            if not prompts:
                return {"stop": "the model's descriptions name no object to ask about", "kept": 0}
        answers = sample_answers(assistant, prompts, self.cfg.samples, self.cfg.temperature,
                                 max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed + 1000 * k)
        del assistant
        kept, pairs, reasons = [], [], Counter()
        for conv, v in zip(prompts, verdicts(prompts, answers, self.verify)):
            reasons[v.reason] += 1
            if v.chosen is not None:
                kept.append(pair(conv, v.chosen, None, "kept"))
                if v.rejected is not None:
                    pairs.append(pair(conv, v.chosen, v.rejected, "pair"))
        kept, dropped = self._dedup(kept, k)
        d.mkdir(parents=True, exist_ok=True)
        write_conversations(kept, d / "data.json", "llava", image_folder=self.folder)
        write_conversations(pairs, d / "pairs.jsonl", "pairs", image_folder=self.folder)
        info = {"images": images, "prompts": len(prompts), "kept": len(kept), "pairs": len(pairs),
                "duplicates": dropped, "rejected": len(prompts) - len(kept) - dropped, "verdicts": dict(reasons),
                "samples_distinct_per_prompt": sum(len(set(map(str.lower, a))) for a in answers) / len(answers),
                **diversity(kept)}
        info["kept_examples"] = [f"{prompt_of(c)[0][-1].content!r} -> {c.messages[-1].content!r}" for c in kept[:3]]
        info["caption_examples"] = captions[:3]
        (d / "generation.json").write_text(json.dumps(info, indent=2))
        return info

    def _dedup(self, kept: list, k: int) -> tuple[list, int]:
        """Drop kept records whose request repeats one kept in an earlier round (or this one)."""
        from llava_lite.data.readers import read_conversations

        from .filters import dedup

        earlier = [c for j in range(1, k) if (self.out / f"round-{j}" / "data.json").is_file()
                   for c in read_conversations(self.out / f"round-{j}" / "data.json", image_folder=self.folder)]
        survivors, _ = dedup(earlier + kept, self.cfg.max_rouge)
        new = {id(c) for c in survivors} & {id(c) for c in kept}
        return [c for c in kept if id(c) in new], len(kept) - len(new)

    def _diversity_stop(self, data: dict) -> str | None:
        if data.get("stop"):
            return data["stop"]
        if not data["kept"]:
            return "the verifier kept nothing"
        value = data[self.cfg.diversity_metric]
        if value < self.cfg.diversity_floor:
            return (f"diversity collapsed: {self.cfg.diversity_metric} {value:.3f} < floor {self.cfg.diversity_floor}"
                    " (not trained on)")
        return None

    def retrain(self, k: int, start: str, data: dict) -> str:
        from llava_lite.config import load_config
        from llava_lite.train.recipe import Trainer

        d, model = self.out / f"round-{k}", start
        steps = [("sft", self.cfg.sft_config, self.cfg.sft_overrides, "data.json")] if self.cfg.objective != "dpo" \
            else []
        if self.cfg.objective != "sft" and data["pairs"]:
            steps.append(("dpo", self.cfg.dpo_config, self.cfg.dpo_overrides, "pairs.jsonl"))
        for name, config, overrides, file in steps:
            out = d / name
            if not (out / "train_summary.json").is_file():
                cfg = load_config(config, list(overrides))
                cfg.model.init_from, cfg.train.output_dir = str(model), str(out)
                own = SourceConfig(path=str(d / file), image_folder=self.folder, name=f"round-{k}")
                cfg.data.sources = [own] + (list(self.cfg.replay) if name == "sft" else [])
                cfg.data.eval_sources = []
                Trainer(cfg, resume=True).run()
            model = str(out)
        return model

    def _finish(self, k: int, model: str, data: dict, stop: str | None) -> None:
        from llava_lite.eval.evaluate import evaluate

        d = self.out / f"round-{k}"
        d.mkdir(parents=True, exist_ok=True)
        c = self.cfg
        report = {} if stop else evaluate(model, vqa=c.vqa, image_folder=c.eval_image_folder, general=c.general,
                                          pope=c.pope, out_dir=str(d / "eval"))
        row = {"round": k, "model": model, **{key: data.get(key) for key in (
            "prompts", "kept", "rejected", "duplicates", "pairs", "distinct_1", "distinct_2", "answer_entropy",
            "tag_coverage")}, **{key: report.get(key) for key in ("vqa_accuracy", "pope_f1", "pope_accuracy",
                                                                  "pope_yes_ratio", "general_ppl")}}
        row["verdicts"] = data.get("verdicts")
        if c.metric not in report and not stop:
            raise ConfigError(f"metric {c.metric!r} is not in the evaluation report; choose one of {sorted(report)}")
        history = [r.get(c.metric) for r in self.rows] + [report.get(c.metric)]
        if stop:
            row["stop"] = stop
        elif k and rounds_without_gain(history, c.min_gain) >= c.patience:
            row["stop"] = f"held-out {c.metric} has not improved for {c.patience} round(s)"
        (d / "row.json").write_text(json.dumps(row, indent=2))
        self.rows.append(row)
        logger.info(f"improve round {k}: " + ", ".join(f"{key}={row[key]}" for key in row if key != "verdicts"))

    def _table(self) -> None:
        keys = ["round", "kept", "rejected", "pairs", "answer_entropy", "distinct_2", "tag_coverage", "vqa_accuracy",
                "pope_f1", "pope_yes_ratio", "general_ppl", "stop"]
        fmt = lambda v: "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(fmt(r.get(key)) for key in keys) + " |" for r in self.rows]
        (self.out / "rounds.md").write_text("\n".join(lines) + "\n")
        (self.out / "rounds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.rows))


def add_parser(subparsers) -> None:
    help = "self-improvement loop: generate, verify, guard, retrain, evaluate; stops on held-out quality or collapse"
    p = subparsers.add_parser("improve", help=help, description=__doc__.split("\n\n")[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML file (see configs/improve.yaml)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. per_round=100 verifier=reference")
    p.add_argument("--rounds", type=int, help="rounds after round 0 (default: the config's)")
    p.set_defaults(func=_run)


def _run(args) -> None:
    cfg = load_improve_config(args.config, args.overrides)
    rows = Loop(cfg).run(args.rounds)
    print((Path(cfg.out) / "rounds.md").read_text(), end="")
    print(f"stopped: {rows[-1].get('stop')}")
