"""A task only an image reader can solve, for the learning guard (tests/train/test_learning.py).

Solid-colour 32x32 images (the tiny tower's size), each colour's RGB jittered per image; the question is
always the same text, so the answer (the colour name) is in the image and nowhere else. Train and held-out
images are drawn apart (different seeds). `train_two_stages` runs both stages through `llava-lite train`,
as a user would; `score` answers the held-out questions greedily through the package's own Assistant.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from llava_lite.cli import main
from llava_lite.data.conversation import Message
from llava_lite.infer.chat import Assistant
from llava_lite.model.llava import LlavaLite

CONFIGS = Path(__file__).parents[2] / "configs"
QUESTION = "What colour is the image?"
# Far apart in RGB, so a +-JITTER draw never makes one look like another.
PALETTE = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 215), "cyan": (40, 200, 210),
           "black": (20, 20, 20), "white": (235, 235, 235)}
JITTER = 15


@dataclass
class ColourTask:
    root: Path
    captions: Path  # stage 1: image -> the colour name
    conversations: Path  # stage 2: image + question -> the colour name
    test: list[tuple[Path, str]]  # held-out (image, colour)
    other: list[Path]  # per held-out question, a held-out image of ANOTHER colour (the control)
    question: str = QUESTION
    classes: int = len(PALETTE)

    @property
    def colour_of(self) -> dict[Path, str]:
        return dict(self.test)

    @property
    def chance(self) -> float:
        return 1 / self.classes


def _images(folder: Path, prefix: str, per_colour: int, rng: random.Random) -> list[tuple[Path, str]]:
    out = []
    for i in range(per_colour):
        for colour, rgb in PALETTE.items():
            rgb = tuple(min(255, max(0, c + rng.randint(-JITTER, JITTER))) for c in rgb)
            path = folder / f"{prefix}{i}-{colour}.png"
            Image.new("RGB", (32, 32), rgb).save(path)
            out.append((path, colour))
    rng.shuffle(out)
    return out


def make_colour_task(root: Path, train_per_colour: int = 8, test_per_colour: int = 8, seed: int = 0,
                     draw=None, question: str = QUESTION) -> ColourTask:
    """`draw(folder, prefix, per_class, rng)` -> [(image path, answer)] makes another such task (the default:
    solid colours)."""
    draw = draw or _images
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    train = draw(images, "train", train_per_colour, random.Random(seed))
    test = draw(images, "test", test_per_colour, random.Random(seed + 1000))
    captions = [{"id": f"cap{i}", "image": p.name, "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": colour}]}
        for i, (p, colour) in enumerate(train)]
    convs = [{"id": f"qa{i}", "image": p.name, "conversations": [
        {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": colour}]}
        for i, (p, colour) in enumerate(train)]
    task = ColourTask(root, root / "captions.json", root / "conversations.json", test, [], question,
                      len({c for _, c in train}))
    task.captions.write_text(json.dumps(captions))
    task.conversations.write_text(json.dumps(convs))
    rng = random.Random(seed + 2000)
    by_colour: dict[str, list[Path]] = {}
    for p, colour in test:
        by_colour.setdefault(colour, []).append(p)
    for _, colour in test:
        task.other.append(rng.choice(by_colour[rng.choice([c for c in by_colour if c != colour])]))
    return task


def _source(path: Path) -> str:
    return f"data.sources=[{{path: {path}, image_folder: {path.parent / 'images'}}}]"


def _common(tiny_lm: Path, out: Path) -> list[str]:
    # As tests/helpers/runs.py: the tiny models, float32 unless a variant says otherwise, no workers.
    return [f"model.lm={tiny_lm}", "data.chat_template=null", "model.vision.model=tiny", "model.vision.pretrained=null",
            "model.dtype=float32", "data.num_workers=0", "data.max_length=128", "train.gradient_checkpointing=false",
            "train.log_every=1", f"train.output_dir={out}"]


STAGE1 = ["train.max_steps=10", "train.batch_size=8", "train.lr=5e-2", "train.warmup_ratio=0.1"]
STAGE2 = ["train.max_steps=60", "train.batch_size=8", "train.lr=1e-2", "train.warmup_ratio=0.1"]


def train_two_stages(tiny_lm: Path, task: ColourTask, out: Path, stage1: list[str] = (), stage2: list[str] = (),
                     stage2_config: str = "stage2.yaml") -> Path:
    """`llava-lite train configs/stage1.yaml ...` then stage 2 from its directory; returns the stage-2 directory.
    `stage1`/`stage2` are extra overrides after the defaults above (the last one of a key wins)."""
    s1, s2 = out / "stage1", out / "stage2"
    main(["train", str(CONFIGS / "stage1.yaml"), *_common(tiny_lm, s1), "model.init_from=null",
          _source(task.captions), *STAGE1, *stage1])
    main(["train", str(CONFIGS / stage2_config), *_common(tiny_lm, s2), f"model.init_from={s1}",
          _source(task.conversations), *STAGE2, *stage2])
    return s2


def answers(model_dir: Path, images: list[Path], question: str = QUESTION) -> list[str]:
    """Greedy replies to `question` about each image, through the Assistant that chat, serve and eval use."""
    assistant = Assistant(LlavaLite.from_pretrained(model_dir))
    chats = [([Message("user", f"<image>\n{question}")], [p]) for p in images]
    return [r.strip() for r in assistant.reply_batch(chats, max_new_tokens=8)]


def score(model_dir: Path, task: ColourTask) -> dict:
    """held_out: exact-match accuracy on the held-out images. other_image: each question asked about another
    image of a different colour, scored against the colour of the question's own image (a reader gets ~0,
    a model answering from priors ~chance, one that leaks the answer some other way ~1)."""
    truth = [colour for _, colour in task.test]
    own = answers(model_dir, [p for p, _ in task.test] + task.other, task.question)
    held_out, other = own[:len(truth)], own[len(truth):]
    shown = [task.colour_of[p] for p in task.other]
    return {"held_out": sum(a == t for a, t in zip(held_out, truth)) / len(truth),
            "other_image": sum(a == t for a, t in zip(other, truth)) / len(truth),
            "follows_other": sum(a == t for a, t in zip(other, shown)) / len(truth), "answers": held_out}
