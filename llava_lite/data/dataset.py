"""From Conversations to padded batches: render lazily, load only the images that exist, pad right.

A sample that cannot be used (an image that will not open, a render failure, an answer truncated
away) is returned as a skipped sample that carries its `Reject` (see rejects.py); the collator
drops it from the batch and passes the rejects on in `batch["num_skipped"].rejects`, so a bad JPEG costs one sample,
not the run, also inside DataLoader workers. Skipped rows carry no labels: token weighting holds."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from llava_lite.constants import IGNORE_INDEX
from llava_lite.data.conversation import Conversation, DataError
from llava_lite.data.images import image_size, load_image
from llava_lite.data.isolate import render_isolated
from llava_lite.data.rejects import Reject
from llava_lite.data.render import RenderError, render


@dataclass
class Sample:
    input_ids: torch.Tensor  # [T]
    labels: torch.Tensor  # [T]
    pixel_values: torch.Tensor | None  # [n_images, 3, H, W]
    skipped: bool  # truncation left no supervised token, or an image would not load: counted, never trained on
    reject: Reject | None = None  # why it was skipped
    segment_ids: torch.Tensor | None = None  # [T] isolated turns (data/isolate.py): 0 = shared prefix, k = turn k
    image_sizes: torch.Tensor | None = None  # [n_images, 2] (height, width): AnyRes, whose pixel_values are tiles
    rejected: Sample | None = None  # a preference pair: the same prompt with the rejected answer (no pixels)

    @property
    def num_images(self) -> int:
        if self.image_sizes is not None:
            return len(self.image_sizes)
        return 0 if self.pixel_values is None else len(self.pixel_values)


class ConversationDataset(Dataset):
    """Renders each conversation when it is fetched (in DataLoader workers), so start-up stays fast."""

    def __init__(
        self,
        conversations: list[Conversation],
        tokenizer,
        image_transform: Callable,  # PIL RGB image -> [k, 3, H, W] (k = 1, or AnyRes's tiles)
        *,
        image_token_id: int,
        image_seq_len: int,  # image tokens per image (AnyRes: the most an image can take, for length estimates)
        max_length: int,
        mode: str = "chat",
        system_prompt: str | None = None,
        pairs: bool = False,  # preference training: each record renders chosen and rejected (data/pairs.py)
        image_tokens: Callable | None = None,  # AnyRes: (height, width) -> that image's tokens, read from its header
    ):
        self.conversations = conversations
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.image_transform = image_transform
        self.kw = dict(image_token_id=image_token_id, image_seq_len=image_seq_len, max_length=max_length,
                       mode=mode, system_prompt=system_prompt)
        self.image_seq_len = image_seq_len
        self.image_tokens = image_tokens

    def __len__(self) -> int:
        return len(self.conversations)

    def lengths(self) -> list[int]:
        """Cheap length estimates (chars / 4 + image tokens) for length grouping; no tokenization."""
        return [
            sum(len(m.content) for m in c.messages) // 4 + len(c.images) * self.image_seq_len
            for c in self.conversations
        ]

    def has_image(self) -> list[bool]:
        return [bool(c.images) for c in self.conversations]

    def __getitem__(self, i: int) -> Sample:
        return self.sample(self.conversations[i])

    def sample(self, conv: Conversation) -> Sample:
        """Render one conversation and load its images: the one path for files and shard streams."""
        if not self.pairs:
            return self._sample(conv)
        if conv.rejected is None:
            return self.skipped(conv.source, conv.id, "not a pair", f"{conv.where}: preference training needs "
                                "'chosen' and 'rejected' answers", "render")
        rejected = self._sample(conv.rejected_conversation(), load=False)
        if rejected.skipped:
            return rejected
        chosen = self._sample(conv)
        chosen.rejected = None if chosen.skipped else rejected
        return chosen

    def _sample(self, conv: Conversation, load: bool = True) -> Sample:
        sizes, kw = None, self.kw
        if self.image_tokens is not None and conv.images:  # AnyRes: each image's tokens follow its size
            try:
                sizes = [image_size(ref, where=f"{conv.where} field 'image'") for ref in conv.images]
            except DataError as e:
                return self.skipped(conv.source, conv.id, e.reason, str(e), "image")
            kw = kw | {"image_seq_len": [self.image_tokens(size) for size in sizes]}
        if conv.mode:  # a text document (format "text") renders plain in any stage: <bos>text<eos>, all supervised
            kw = kw | {"mode": conv.mode}
        try:
            r = (render_isolated if conv.isolate_turns else render)(conv, self.tokenizer, **kw)
        except RenderError as e:
            return self.skipped(
                conv.source, conv.id, e.reason if e.reason != "bad record" else "render failed", str(e), "render"
            )
        if r is None:  # truncation left nothing to learn
            return self.skipped(
                conv.source,
                conv.id,
                "answer truncated away",
                f"{conv.where}: the answer is truncated away by data.max_length={self.kw['max_length']}",
                "truncated",
            )
        pixels = None
        if r.num_images and load:
            try:
                images = [load_image(ref, where=f"{conv.where} field 'image'") for ref in conv.images[: r.num_images]]
            except DataError as e:
                return self.skipped(conv.source, conv.id, e.reason, str(e), "image")
            pixels = torch.cat([self.image_transform(im) for im in images])
        segments = None if r.segments is None else torch.tensor(r.segments)
        image_sizes = torch.tensor(sizes[:r.num_images]) if sizes and pixels is not None else None
        return Sample(torch.tensor(r.input_ids), torch.tensor(r.labels), pixels, False, segment_ids=segments,
                      image_sizes=image_sizes)

    def skipped(self, source: str, id: str, reason: str, message: str, kind: str) -> Sample:
        """A one-pad-token stand-in with no label, counted and reported by the collator."""
        return Sample(torch.tensor([self.tokenizer.pad_token_id]), torch.tensor([IGNORE_INDEX]), None, True,
                      Reject(id, source, reason, kind, 0, message))


class Collator:
    """Pad right to the longest sample; stack only the images that exist (text-only -> no pixel_values).
    Preference pairs become 2B rows (B chosen, then their B rejected) over the chosen rows' images,
    with `image_rows` saying which image fills each image slot in row order (each image encoded once).
    When a sample has isolated turns the batch also carries `segment_ids` ([B, W]: a sample's turn
    segments, 0 for every token of the other samples, -1 for padding), which the model turns into
    positions and an attention mask (model/packed_attention.py `segment_attention`)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int = 8):
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, samples: list[Sample]) -> dict:
        kept = [s for s in samples if not s.skipped] or samples[:1]  # never an empty batch (DDP needs a forward)
        pairs = [s for s in kept if s.rejected is not None]
        if pairs:  # preference pairs: chosen rows, then rejected rows in the same order; each image once
            kept = pairs + [s.rejected for s in pairs]
        width = max(len(s.input_ids) for s in kept)
        width = -(-width // self.multiple) * self.multiple
        ids = torch.full((len(kept), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(kept), width), dtype=torch.long)
        for i, s in enumerate(kept):
            n = len(s.input_ids)
            ids[i, :n], labels[i, :n], mask[i, :n] = s.input_ids, s.labels, 1
        pixels = [s.pixel_values for s in kept if s.pixel_values is not None]
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "labels": labels,
            "pixel_values": torch.cat(pixels) if pixels else None,
            "num_skipped": Skipped.of(samples),
        }
        sizes = [s.image_sizes for s in kept if s.image_sizes is not None]
        if sizes:  # AnyRes: pixel_values holds each image's tiles, image_sizes says how many
            batch["image_sizes"] = torch.cat(sizes)
        if pairs and pixels:  # rejected row i reads the images of chosen row i (LlavaLite.embed image_rows)
            batch["image_rows"] = torch.arange(sum(s.num_images for s in pairs)).repeat(2)
        if any(s.segment_ids is not None for s in kept):
            segments = mask - 1  # 0 for tokens, -1 for padding
            for i, s in enumerate(kept):
                if s.segment_ids is not None:
                    segments[i, :len(s.segment_ids)] = s.segment_ids
            batch["segment_ids"] = segments
        return batch


class Skipped(int):
    """A batch's number of skipped samples that also carries their `Reject`s (`.rejects`). An int,
    so every consumer that sums or strips "num_skipped" keeps working; it survives DataLoader workers."""

    rejects: list

    @classmethod
    def of(cls, samples: list[Sample]) -> Skipped:
        n = cls(sum(s.skipped for s in samples))
        n.rejects = [s.reject for s in samples if s.reject is not None]
        return n


def batch_rejects(batch: dict) -> list[Reject]:
    """The rejects a collated batch carries (none for collators that do not record them)."""
    return list(getattr(batch.get("num_skipped"), "rejects", []))
