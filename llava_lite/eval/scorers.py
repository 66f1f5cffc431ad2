"""Benchmark file formats and scorers the field reports: VQAv2 soft accuracy, POPE, multiple choice.

No torch, so answer files written elsewhere can be scored anywhere. Each scorer follows the
reference script named in its docstring, so numbers are comparable with published ones.
`read_questions` is the one reader of question files (LLaVA's JSONL and log-likelihood choice
sets): a bad row is one DataError line, "file:line: what is wrong; how to fix it".
"""
from __future__ import annotations

import json
import re
import string
import uuid
from collections.abc import Sequence
from pathlib import Path

from llava_lite.data.conversation import DataError

# The prompt suffixes LLaVA-1.5's eval question files and loaders use.
MC_ANSWER = "Answer with the option's letter from the given choices directly."
LETTERS = string.ascii_uppercase


# ---- question files: LLaVA question / answer JSONL, choice sets ----------------------------------

def _fail(path, n: int, what: str) -> None:
    raise DataError(f"{path}:{n}: {what}", "bad question")


def _check_llava(row: dict, path, n: int) -> None:
    for key in ("question_id", "text"):
        if key not in row:
            _fail(path, n, f"question has no field {key!r}; add it (LLaVA questions need question_id and text)")
    if not isinstance(row["question_id"], (str, int)) or isinstance(row["question_id"], bool):
        _fail(path, n, "question_id must be a string or an integer")
    if not isinstance(row["text"], str) or not row["text"].strip():
        _fail(path, n, "text must be a non-empty string holding the question")
    for key in ("image", "category", "answer"):
        if key in row and not isinstance(row[key], str):
            _fail(path, n, f"{key} must be a string, got {type(row[key]).__name__}; quote it")
    if "answers" in row:
        a = row["answers"]
        if not isinstance(a, list) or not a or not all(isinstance(x, str) for x in a):
            _fail(path, n, "answers must be a non-empty list of strings (one per human answer)")
    for key in ("options", "choices"):
        if key in row:
            o = row[key]
            if not isinstance(o, list) or not 2 <= len(o) <= 26 or not all(isinstance(x, str) for x in o):
                _fail(path, n, f"{key} must be a list of 2 to 26 strings (the option texts, in letter order)")


def _check_choice(row: dict, path, n: int) -> None:
    """{question, choices, answer[, image, category]}; `answer` (a 0-based index, a letter or the text
    of one choice) is resolved to `answer_index`."""
    if not isinstance(row.get("question"), str):
        _fail(path, n, "needs a string 'question'")
    choices = row.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        _fail(path, n, "'choices' must be a list of at least 2 non-empty strings")
    answer = row.get("answer")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        row["answer_index"] = answer
    elif isinstance(answer, str) and answer in choices:
        row["answer_index"] = choices.index(answer)
    elif isinstance(answer, str) and len(answer) == 1 and answer.upper() in LETTERS[:len(choices)]:
        row["answer_index"] = LETTERS.index(answer.upper())
    else:
        _fail(path, n, f"'answer' {answer!r} is neither an index, a letter nor one of the choices")


# kind -> (row check, what every row needs: named when the file holds none)
_KINDS = {"llava": (_check_llava, "question_id and text"), "choice": (_check_choice, "question, choices and answer")}


def read_questions(path: str | Path, kind: str = "llava") -> list[dict]:
    """A question JSONL, checked line by line so a bad file fails before any model runs. kind "llava":
    LLaVA's questions (`--vqa`, `--pope`, `--mc`, `--judge-questions`; question_id unique); "choice":
    multiple choice by log-likelihood (`--choice`, see choice.py)."""
    check, needs = _KINDS[kind]
    rows: list[dict] = []
    seen: dict = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            _fail(path, n, f"not JSON ({e.msg}); write one JSON object per line")
        if not isinstance(row, dict):
            _fail(path, n, f"expected a JSON object, got {type(row).__name__}; write one question object per line")
        check(row, path, n)
        qid = row.get("question_id") if kind == "llava" else None
        if qid in seen:
            _fail(path, n, f"question_id {qid!r} repeats line {seen[qid]}; answers are matched by id, make ids unique")
        if qid is not None:
            seen[qid] = n
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: no questions; write one JSON object per line with {needs}", "bad question")
    return rows


def answer_record(question: dict, text: str, model_id: str) -> dict:
    """One line of LLaVA's answer JSONL, key for key, so LLaVA's own eval scripts read our files."""
    return {"question_id": question["question_id"], "prompt": question["text"], "text": text,
            "answer_id": uuid.uuid4().hex, "model_id": model_id, "metadata": {}}


def with_suffix(text: str, suffix: str) -> str:
    """Appends the benchmark instruction on its own line; never twice if the file already has it."""
    return text if text.rstrip().endswith(suffix) else f"{text}\n{suffix}"


def render_options(question: str, options: Sequence[str]) -> str:
    """MMBench/ScienceQA layout: the question, then "A. option" lines."""
    if len(options) > len(LETTERS):
        raise DataError(f"{len(options)} options; at most 26 can be lettered A-Z", "bad question")
    return "\n".join([question] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)])


# ---- VQAv2 ------------------------------------------------------------------------------------

# Follows the official VQA eval script's (vqaEval.py) contractions list, keys as written there. Its
# few capitalised keys ("Im", "Ive", ...) never match after lower-casing, there as here.
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm",
    "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock", "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", "shant": "shan't",
    "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd",
    "someoned've": "someone'd've", "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", "somethingll": "something'll", "thats": "that's",
    "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've", "therere": "there're",
    "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
_DIGITS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
           "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official pattern, kept as is: its look-behind is malformed, so in effect a period is kept only
# when a digit follows it ("2.5" stays, "2." and "end." lose it).
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
# vqaEval.py calls periodStrip.sub("", outText, re.UNICODE): the flag lands in `count` (re.UNICODE == 32),
# so at most 32 periods are stripped.
_PERIOD_COUNT = 32


def vqa_normalize(text: str) -> str:
    """The official VQA answer normalisation (vqaEval.py: newlines and tabs to spaces, strip, then
    processPunctuation and processDigitArticle), so our VQAv2 numbers match the evaluation server's.
    The apostrophe is no punctuation there: "the man's hat" -> "man's hat"."""
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # processPunctuation: each mark in _PUNCT is dropped when the text has it next to a space or has a
    # comma between digits ("1,000"), else spaced; then periods not before a digit are stripped.
    out = text
    glue = _COMMA_DIGITS.search(text) is not None
    for p in _PUNCT:
        out = out.replace(p, "" if glue or p + " " in text or " " + p in text else " ")
    out = _PERIOD.sub("", out, count=_PERIOD_COUNT)
    # processDigitArticle: lower case, number words to digits, articles dropped, contractions restored.
    words = [_DIGITS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def vqa_score(pred: str, answers: str | Sequence[str]) -> float:
    """VQAv2 soft accuracy: min(#humans who gave the answer / 3, 1), averaged over the leave-one-out
    subsets of the human answers as the official script does. With one reference answer (our own
    sets) it is exact match after normalisation. References are normalised too: VQAv2's own are
    already normalised, other sets' are not."""
    refs = [vqa_normalize(a) for a in ([answers] if isinstance(answers, str) else answers)]
    if not refs:
        raise DataError("no reference answers to score against", "bad question")
    p = vqa_normalize(pred)
    if len(refs) == 1:
        return float(p == refs[0])
    hits = sum(r == p for r in refs)
    # Leaving out a matching answer leaves hits - 1 matches among the others, any other leaves hits.
    return sum(min(1.0, (hits - (r == p)) / 3) for r in refs) / len(refs)


def vqa_accuracy(preds: Sequence[str], answers_list: Sequence[str | Sequence[str]]) -> float:
    """Mean VQAv2 soft accuracy over questions."""
    _same_length(preds, answers_list)
    return sum(vqa_score(p, a) for p, a in zip(preds, answers_list)) / len(preds)


def _same_length(preds: Sequence, truth: Sequence) -> None:
    if not preds or len(preds) != len(truth):
        raise ValueError(f"{len(preds)} predictions for {len(truth)} ground truths; need the same non-zero number")


# ---- POPE -------------------------------------------------------------------------------------

def parse_yes_no(text: str) -> str:
    """Yes/no as LLaVA's eval_pope.py reads a reply: first sentence, commas dropped, "no" if any word
    is "No", "no" or "not", else "yes" (so a reply that hedges without a negation counts as yes)."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if "No" in words or "not" in words or "no" in words else "yes"


def pope_metrics(preds: Sequence[str], labels: Sequence[str]) -> dict:
    """POPE's accuracy, precision, recall, F1 and yes ratio with "yes" as the positive class.
    `preds` are raw replies (parsed with parse_yes_no), `labels` "yes"/"no"."""
    _same_length(preds, labels)
    truth = []
    for label in labels:
        label = str(label).strip().lower()
        if label not in ("yes", "no"):
            raise DataError(f"POPE label {label!r} is neither 'yes' nor 'no'", "bad question")
        truth.append(label == "yes")
    guess = [parse_yes_no(p) == "yes" for p in preds]
    tp = sum(g and t for g, t in zip(guess, truth))
    fp = sum(g and not t for g, t in zip(guess, truth))
    fn = sum(t and not g for g, t in zip(guess, truth))
    tn = len(truth) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0  # eval_pope.py divides by zero here
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(truth), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": sum(guess) / len(guess), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


# ---- multiple choice ----------------------------------------------------------------------------

_MC_PUNCT = str.maketrans({c: " " for c in ".()[],:;!*#{}"})  # MMBench's can_infer_option set


def parse_letter(text: str, n_options: int, options: Sequence[str] | None = None) -> str | None:
    """The option letter a reply chooses, or None, in the order LLaVA's ScienceQA script and MMBench
    try: the whole reply is a letter ("B", "(B)", "b."), it opens with "B." / "B)" / "(B)", it says
    "answer is B" / "Answer: B", else the one option letter standing alone in it (two different
    ones are ambiguous: None, as MMBench). Only A.. up to n_options count, upper case except for a
    bare reply, since "a" and "I" are words. `options`: also match a reply quoting exactly one
    option's text, as MMBench's can_infer_text."""
    valid = set(LETTERS[:n_options])
    s = text.strip()
    bare = re.fullmatch(r"[(\[]?([A-Za-z])[)\].:]?", s)
    if bare:
        return bare.group(1).upper() if bare.group(1).upper() in valid else None
    lead = re.match(r"\(([A-Z])\)|([A-Z])[.):](?:\s|$)", s)
    if lead and (lead.group(1) or lead.group(2)) in valid:
        return lead.group(1) or lead.group(2)
    for m in re.finditer(r"answer(?: is|:)\s*(?:option\s*)?[(\[]?([A-Z])\b", s, re.IGNORECASE):
        if m.group(1) in valid:
            return m.group(1)
    found = {w for w in s.translate(_MC_PUNCT).split() if w in valid}
    if len(found) == 1:
        return found.pop()
    if not found and options:
        quoted = [LETTERS[i] for i, o in enumerate(options[:n_options]) if o.strip() and o.lower() in s.lower()]
        if len(quoted) == 1:
            return quoted[0]
    return None


def mc_accuracy(preds: Sequence[str], answers: Sequence[str | int], n_options: int | Sequence[int]) -> float:
    """Share of replies whose parsed letter is the right one; an unparsable reply counts wrong.
    `answers`: letters, or 0-based option indices (ScienceQA's own files); `n_options`: one count
    for all questions or one per question."""
    _same_length(preds, answers)
    counts = [n_options] * len(preds) if isinstance(n_options, int) else list(n_options)
    if len(counts) != len(preds):
        raise ValueError(f"{len(counts)} option counts for {len(preds)} predictions")
    right = 0
    for pred, answer, n in zip(preds, answers, counts):
        truth = LETTERS[answer] if isinstance(answer, int) else answer.strip().upper()
        right += parse_letter(pred, n) == truth
    return right / len(preds)
