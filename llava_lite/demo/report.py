"""report.md and plots for the demo: loss curves of both stages and VQA accuracy bars."""
from __future__ import annotations

import json
from pathlib import Path


def write_summary(out: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, stage in zip(axes, ("stage1", "stage2")):
        rows = [json.loads(x) for x in (out / stage / "metrics.jsonl").read_text().splitlines() if x.strip()]
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
        ax.set_title(f"{stage} loss (response tokens)")
        ax.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=100)
    plt.close(fig)

    types = sorted(report["vqa_accuracy_by_type"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    xs = range(len(types) + 2)
    labels = types + ["all", "unseen combos"]
    s2 = [report["vqa_accuracy_by_type"][t] for t in types] + [report["vqa_accuracy"],
                                                                report["vqa_accuracy_unseen_combos"] or 0]
    s1 = [report["stage1_vqa_accuracy_by_type"].get(t, 0) for t in types] + [report["stage1_vqa_accuracy"], 0]
    ax.bar([x - 0.2 for x in xs], s1, width=0.4, label="after stage 1")
    ax.bar([x + 0.2 for x in xs], s2, width=0.4, label="after stage 2")
    ax.axhline(report["chance_accuracy"], color="k", linestyle="--", label="chance")
    ax.set_xticks(list(xs), labels, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("exact-match accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "vqa_accuracy.png", dpi=100)
    plt.close(fig)

    lines = [
        f"# llava-lite demo ({report['preset']} preset)", "",
        "| metric | value |", "|---|---|",
        f"| VQA exact match (held-out images) | {report['vqa_accuracy']:.1%} |",
        f"| VQA exact match, unseen colour-shape combos | {(report['vqa_accuracy_unseen_combos'] or 0):.1%} |",
        f"| chance (uniform guess per question type) | {report['chance_accuracy']:.1%} |",
        f"| majority answer per type | {report['majority_accuracy']:.1%} |",
        f"| VQA after stage 1 only | {report['stage1_vqa_accuracy']:.1%} |",
        "| VQA with each question asked about another image (answer priors) | "
        f"{report['other_image_vqa_accuracy']:.1%} |",
        f"| instruction perplexity (held-out, response tokens) | {report['instruction_ppl']:.2f} |",
        f"| general-text perplexity | {report['general_ppl']:.2f} |",
        f"| text-task perplexity (held-out, response tokens) | {report['text_task_ppl']:.2f} |",
        f"| wall time | {report['wall_seconds']:.0f} s |", "",
        "| question type | stage 1 | stage 2 | stage 2, another image |", "|---|---|---|---|",
        *[f"| {t} | {report['stage1_vqa_accuracy_by_type'].get(t, 0):.1%} | {report['vqa_accuracy_by_type'][t]:.1%} | "
          f"{report['other_image_vqa_accuracy_by_type'][t]:.1%} |" for t in types],
        *_binding_lines(report.get("vqa_accuracy_by_choices_in_image") or []),
        *_base_lines(report.get("base_models") or {}),
        *_pope_choice_lines(report),
        *_forgetting_lines(report),
        "", "![loss](loss_curves.png)", "", "![accuracy](vqa_accuracy.png)", "",
    ]
    (out / "report.md").write_text("\n".join(lines))


def _binding_lines(rows: list[dict]) -> list[str]:
    """Colour and shape questions by how many colours (shapes) the image holds: a model that reads the image's
    colours but does not bind one to the object asked about scores 1/n there (README, "What moves the demo's
    number")."""
    if not rows:
        return []
    return ["", "| binding: question type, answers of its kind in the image | questions | stage 2 | "
                "without binding (1/n) |", "|---|---|---|---|",
            *[f"| {r['category']}, {r['choices_in_image']} | {r['questions']} | {r['accuracy']:.1%} | "
              f"{1 / r['choices_in_image']:.1%} |" for r in rows]]


def _base_lines(base: dict) -> list[str]:
    """What the base models bring: the CLIP's linear probes and what the LM reads from a caption (no image):
    with no gap to another image's captions, stage 2 builds the lookup on image tokens from nothing."""
    clip, lm = base.get("clip") or {}, base.get("lm") or {}
    rows = [("CLIP probe: object colour", clip.get("object_color")),
            ("CLIP probe: object shape", clip.get("object_shape")),
            ("CLIP probe: patch position", clip.get("patch_position")),
            ("LM reading: stage 2's questions, the image's captions in place of the image", lm.get("reading")),
            ("the same questions with another image's captions (answer priors)", lm.get("reading_other_captions"))]
    rows = [(k, v) for k, v in rows if v is not None]
    if not rows:
        return []
    return ["", "| base model check | value |", "|---|---|", *[f"| {k} | {v:.1%} |" for k, v in rows]]


def _pope_choice_lines(report: dict) -> list[str]:
    """POPE-style yes/no and multiple choice, each next to what guessing gives."""
    lines = []
    if report.get("pope_questions"):
        lines += ["", f"| POPE-style, {report['pope_questions']} balanced yes/no questions | stage 2 | chance |",
                  "|---|---|---|",
                  f"| F1 (yes = positive) | {report['pope_f1']:.1%} | 50.0% (coin), 66.7% (always yes) |",
                  f"| accuracy | {report['pope_accuracy']:.1%} | 50.0% |",
                  f"| yes-ratio | {report['pope_yes_ratio']:.1%} | 50.0% (the truth) |"]
        for cat, m in (report.get("pope_by_category") or {}).items():
            lines.append(f"| {cat}: F1 / accuracy / yes-ratio | {m['f1']:.1%} / {m['accuracy']:.1%} / "
                         f"{m['yes_ratio']:.1%} | |")
    if report.get("choice_questions"):
        chance = f"{report['choice_chance']:.1%}"
        lines += ["", f"| multiple choice by log-likelihood ({report['choice_questions']} questions) "
                      "| stage 2 | chance |",
                  "|---|---|---|",
                  f"| accuracy (sum of response log-probs) | {report['choice_accuracy']:.1%} | {chance} |",
                  f"| accuracy (per byte of option) | {report['choice_accuracy_norm']:.1%} | {chance} |"]
        if report.get("choice_text_questions"):
            lines.append(f"| text rows only (caption + question), {report['choice_text_questions']} | "
                         f"{report['choice_text_accuracy']:.1%} | |")
    return lines


def _forgetting_lines(report: dict) -> list[str]:
    """Base LM vs stage 2 on text (what instruction tuning cost the LM), from `llava-lite eval --base`."""
    rows = report.get("comparison") or []
    if not rows:
        return []
    lines = ["", "| forgetting: text skills | base LM | stage 2 | delta |", "|---|---|---|---|"]
    for r in rows:
        share = "accuracy" in r["metric"]
        fmt = (lambda v: f"{v:.1%}") if share else (lambda v: f"{v:.2f}")
        delta = f"{r['delta'] * 100:+.1f} pt" if share else f"{r['delta']:+.2f} ({r.get('ratio') or 0:.2f}x)"
        lines.append(f"| {r['label']} | {fmt(r['base'])} | {fmt(r['tuned'])} | {delta} |")
    notes = report.get("comparison_notes") or []
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    answers = report.get("general_answers") or []  # preset smol: a pretrained LM's general questions
    if answers:
        mark = {True: "right", False: "wrong"}
        lines += ["", "| general question | base LM | stage 2 |", "|---|---|---|",
                  *[f"| {a['question']} | {_cell(a['base'])} ({mark[a['base_right']]}) | {_cell(a['tuned'])} "
                    f"({mark[a['tuned_right']]}{', same text' if a['same'] else ''}) |" for a in answers]]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
