"""The OpenAI chat-completions request, validated, and turned into llava-lite messages + images."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Literal, Union

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llava_lite.constants import IMAGE_TOKEN
from llava_lite.data.conversation import Message
from llava_lite.serve.errors import APIError
from llava_lite.serve.images import load_url
from llava_lite.serve.settings import Settings


class ImageURL(BaseModel):
    url: str
    detail: str | None = None  # accepted and ignored: the vision tower has one resolution


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part]]


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields llava-lite honours; other OpenAI fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Union[str, list[str], None] = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.Generator.manual_seed takes
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


@dataclass
class Prompt:
    """What `Assistant.reply` needs from a request."""

    messages: list[Message]
    images: list[Image.Image]


def parse_request(body: bytes) -> ChatRequest:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from None
    try:
        return ChatRequest.model_validate(data)
    except ValidationError as e:
        where, message = _describe(e)
        raise APIError(400, f"{where}: {message}" if where else message, where or None) from None


def _describe(error: ValidationError) -> tuple[str, str]:
    """The most specific problem, as ("messages.0.content.1.image_url.url", "Field required").
    pydantic names union branches in `loc` ("str", "list[...]", a part's tag): those are dropped."""
    found: dict[str, list[str]] = {}
    for err in error.errors():
        loc = [str(x) for x in err["loc"] if x != "str" and "[" not in str(x)]
        loc = [x for i, x in enumerate(loc) if i == 0 or x != loc[i - 1]]  # "image_url.image_url" is tag + field
        found.setdefault(".".join(loc), []).append(err["msg"])
    where = max(found, key=lambda w: w.count(".") + bool(w))
    first, *rest = found[where]
    return where, first + "".join(" or " + m.removeprefix("Input should be ") for m in rest)


def to_prompt(req: ChatRequest, settings: Settings) -> Prompt:
    """OpenAI messages -> llava-lite messages with `<image>` placeholders, images decoded in order.
    A system (or developer) message may only come first, and the last message must be the user's."""
    messages: list[Message] = []
    images: list[Image.Image] = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        if role == "system" and i != 0:
            raise APIError(400, f"messages.{i}: a system message may only be the first message", f"messages.{i}.role")
        parts = [TextPart(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        texts = []
        for j, part in enumerate(parts):
            param = f"messages.{i}.content.{j}"
            if isinstance(part, TextPart):
                if IMAGE_TOKEN in part.text:
                    raise APIError(400, f"{param}: text may not contain {IMAGE_TOKEN!r}; send images as "
                                   "image_url parts", param)
                texts.append(part.text)
            elif role != "user":
                raise APIError(400, f"{param}: images are only accepted in user messages", param)
            elif len(images) >= settings.max_images:
                raise APIError(400, f"{param}: more than {settings.max_images} images in one request", param,
                               "too_many_images")
            else:
                images.append(load_url(part.image_url.url, settings, f"{param}.image_url.url"))
                texts.append(IMAGE_TOKEN)
        messages.append(Message(role, "\n".join(texts)))
    if messages[-1].role != "user":
        raise APIError(400, f"the last message must be from the user, not {messages[-1].role!r}", "messages")
    return Prompt(messages, images)
