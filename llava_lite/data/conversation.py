"""The one conversation schema every data source is read into.

A `Conversation` is a list of messages (system / user / assistant) whose text may hold
`<image>` placeholders, plus the images those placeholders refer to, in order. Images are
references (a path, or an already decoded PIL image); they are opened lazily by the dataset.
`source` says where the record came from ("file.json:17") so every error can name it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from PIL import Image

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.errors import LlavaLiteError

ROLES = ("system", "user", "assistant")

ImageRef = Union[str, Image.Image]


class DataError(LlavaLiteError, ValueError):
    """A record that cannot be used; the message names the file, record and field. `reason` is a
    short stable label for counting ("empty answer", "unreadable image"; see REASONS in readers.py)."""

    def __init__(self, message: str = "", reason: str = "bad record"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # keeps the reason across DataLoader workers and pickling
        return (type(self), (str(self), self.reason))


@dataclass
class Message:
    role: str  # "system" | "user" | "assistant"
    content: str  # text, with IMAGE_TOKEN where an image goes


@dataclass
class Conversation:
    messages: list[Message]
    images: list[ImageRef] = field(default_factory=list)
    id: str = ""
    source: str = ""  # "path:line" or "path[index]" for error messages
    isolate_turns: bool = False  # its source's isolate_turns: each question trained alone (data/isolate.py)
    rejected: str | None = None  # a preference pair (data/pairs.py): the dispreferred last answer
    mode: str | None = None  # how it renders when not as the stage's data.mode: "plain" for a text document

    @property
    def where(self) -> str:
        return f"{self.source} (id={self.id!r})" if self.id else self.source or "<conversation>"

    def num_placeholders(self) -> int:
        return sum(m.content.count(IMAGE_TOKEN) for m in self.messages)

    def validate(self) -> Conversation:
        """Raise DataError unless roles are known, turns alternate, answers are non-empty and the
        number of `<image>` placeholders equals the number of images."""
        if not self.messages:
            raise DataError(f"{self.where}: field 'messages' is empty", "no conversations")
        body = self.messages
        if body[0].role == "system":
            body = body[1:]
        for i, m in enumerate(self.messages):
            if m.role not in ROLES:
                raise DataError(f"{self.where}: message {i} has unknown role {m.role!r} (expected one of {ROLES})",
                                "unknown role")
            if m.role == "system" and i != 0:
                raise DataError(f"{self.where}: message {i} is a system message after the first turn",
                                "turns out of order")
        for i, m in enumerate(body):
            want = "user" if i % 2 == 0 else "assistant"
            if m.role != want:
                raise DataError(f"{self.where}: turns must alternate user/assistant; "
                                f"turn {i} is {m.role!r}, expected {want!r}",
                                "turns out of order")
            if m.role == "assistant" and not m.content.strip():
                raise DataError(f"{self.where}: assistant turn {i} is empty", "empty answer")
        if not any(m.role == "assistant" for m in body):
            raise DataError(f"{self.where}: no assistant turn to learn from", "no answer")
        if any(IMAGE_TOKEN in m.content for m in self.messages if m.role == "assistant"):
            raise DataError(f"{self.where}: an {IMAGE_TOKEN} placeholder is inside an assistant turn",
                            "placeholder inside answer")
        if self.rejected is not None:
            self._validate_pair()
        n = self.num_placeholders()
        if n != len(self.images):
            raise DataError(
                f"{self.where}: {n} {IMAGE_TOKEN} placeholder(s) in the text "
                f"but {len(self.images)} image(s) in field 'image'",
                "placeholder count mismatch",
            )
        return self

    def _validate_pair(self) -> None:
        """The last message is the chosen answer; the rejected one replaces it."""
        if self.messages[-1].role != "assistant":
            raise DataError(f"{self.where}: a preference pair must end with the chosen answer", "not a pair")
        if not self.rejected.strip():
            raise DataError(f"{self.where}: field 'rejected' is empty", "empty answer")
        if IMAGE_TOKEN in self.rejected:
            raise DataError(f"{self.where}: an {IMAGE_TOKEN} placeholder is inside field 'rejected'",
                            "placeholder inside answer")
        if self.rejected.strip() == self.messages[-1].content.strip():
            raise DataError(f"{self.where}: 'chosen' and 'rejected' are the same answer; the pair teaches nothing",
                            "identical pair")

    def rejected_conversation(self) -> Conversation:
        """The same conversation ending with the rejected answer."""
        messages = self.messages[:-1] + [Message("assistant", self.rejected)]
        return Conversation(messages, self.images, self.id, self.source, self.isolate_turns)
