"""The keyword tagger behind the "tags" curriculum and the data tools' tag reports: InsTag-style
skill tags of a conversation's request (the user turns; the answer does not change what skill the
request needs). It needs nothing but the text, so training can score difficulty without a teacher."""
from __future__ import annotations

import re

from llava_lite.constants import IMAGE_TOKEN, SHORT_ANSWER
from llava_lite.data.conversation import Conversation

SHORT_SUFFIX = "\n" + SHORT_ANSWER  # as the rule teachers append it

# (tag, pattern over the user turns); word boundaries keep "list" from matching "listen".
RULES: list[tuple[str, str]] = [
    ("counting", r"\bhow many\b|\bcount\b"),
    ("color recognition", r"\bwhat colou?r\b|\bcolou?rs?\b"),
    ("shape recognition", r"\bwhat shape\b|\bshapes?\b"),
    ("spatial relation", r"\bleft\b|\bright\b|\babove\b|\bbelow\b|\bwhere\b|\btop\b|\bbottom\b"),
    ("existence check", r"^\s*is there\b|\bare there any\b"),
    ("image description", r"\bdescribe\b|\bdescription\b|\bwhat do you see\b"),
    ("comparison", r"\blarger\b|\bsmaller\b|\bmore\b.*\bthan\b|\bcompare\b|\bfurther\b|\bwhich is\b"),
    ("coding", r"\bcode\b|\bpython\b|\bfunction\b|\bprogram\b|\bsql\b|\bjavascript\b|```"),
    ("math", r"\bcalculate\b|\bsolve\b|\bequation\b|\bmath\b|\bprime\b|\d+\s*[-+*/^]\s*\d+"),
    ("step-by-step reasoning", r"\bstep[- ]by[- ]step\b|\bshow (each|your) step|\breason(ing)?\b|\bexplain why\b"),
    ("creative writing", r"\b(story|poem|song|haiku|slogan)\b"),
    ("summarization", r"\bsummar"),
    ("translation", r"\btranslat"),
    ("explanation", r"\bexplain\b|\bwhy\b|\bwhat is\b"),
    ("listing", r"\blist\b|\benumerate\b"),
    (
        "format constraint",
        r"\bno more than\b|\bat most\b|\bnumbered list\b|\bbullet|\bjson\b|\bin \w+ (words|sentences)\b|\bdo not use\b",
    ),
    ("advice", r"\bhow (can|do|should) i\b|\btips?\b|\badvice\b|\bplan\b"),
    ("rewriting", r"\brewrite\b|\bparaphrase\b|\brephrase\b|\bedit\b"),
    ("classification", r"\bclassify\b|\bcategori[sz]e\b"),
    ("brainstorming", r"\bideas\b|\bbrainstorm\b"),
    ("role play", r"\bact as\b|\bpretend\b|\brole[- ]play\b"),
    ("concrete scenario", r"\bfor a\b|\bon a\b|\bin python\b"),
    ("audience adaptation", r"\bfor a (beginner|child|ten-year-old)\b|\bbeginner\b"),
]
_COMPILED = [(t, re.compile(p, re.IGNORECASE | re.MULTILINE)) for t, p in RULES]


def query_text(conv: Conversation) -> str:
    """The user turns, without placeholders or the short-answer suffix."""
    text = "\n".join(m.content for m in conv.messages if m.role == "user")
    return text.replace(SHORT_SUFFIX, "").replace(IMAGE_TOKEN, "").strip()


def heuristic_tags(conv: Conversation) -> list[str]:
    text = query_text(conv)
    tags = [t for t, p in _COMPILED if p.search(text)]
    if conv.images:
        tags.append("visual understanding")
    if sum(m.role == "user" for m in conv.messages) > 1:
        tags.append("multi-turn")
    if SHORT_SUFFIX in "".join(m.content for m in conv.messages):
        tags.append("short answer")
    return tags or ["open question"]
