"""Learning guard: the model must learn to read its image.

Every other training test checks mechanics (masks, equivalence, resume) and stays green when the model stops
learning to see. Here a task only an image reader can solve (tests/helpers/learning.py: solid-colour images,
the same question every time, the colour name as the answer) is trained through `llava-lite train` exactly as
a user runs it (stage 1 configs/stage1.yaml, then stage 2 from the stage-1 directory) on the tiny models, and
the held-out images are answered greedily by the package's own Assistant (chat, serve and eval use it).

Pass: held-out exact match >= 0.95, and the control (each question asked about ANOTHER image of a different
colour, scored against the colour of the question's own image) near chance. A model answering from priors
scores chance on both and fails the first bound; one that gets the answer some way other than from the image
it is shown (a leak) fails the second.

Measured (tiny models, 6 colours, 48 train / 48 held-out images, 10 + 60 steps; LoRA 10 + 100): every variant
reached 1.0 held-out, 0.0 on the control and 1.0 answering the other image's own colour, for train.seed 0, 1, 2.
With learning broken the guard trips (held-out <= 1/6): lr 0; training with each sample's image features rolled
to another sample, or zeroed; a schedule whose total steps are miscounted (lr 0 after warmup); labels shifted
by one. Not caught by the full fine-tune: a frozen projector (the trainable LM reads a random projection too).
test_guard_trips_when_nothing_is_learned keeps one negative case (lr 0): the guard is proven able to fail.
"""
from __future__ import annotations

import pytest
from helpers.learning import ColourTask, make_colour_task, score, train_two_stages

THRESHOLD = 0.95
CONTROL_MARGIN = 0.15  # above chance (1/6); a reader scores ~0, a model answering from priors ~chance

# variant -> (stage-1 overrides, stage-2 overrides, stage-2 config), after the helper's defaults
VARIANTS = {
    "fp32": ([], [], "stage2.yaml"),
    "bf16": (["model.dtype=bfloat16"], ["model.dtype=bfloat16"], "stage2.yaml"),
    "packing": (["data.packing=true"], ["data.packing=true"], "stage2.yaml"),
    # LoRA on the frozen random LM (its lm_head untrained) learns slower: more steps, a wider adapter;
    # stage2_lora.yaml's projector_lr (2e-5, for a real 7B run) would leave the projector nearly still.
    "lora": ([], ["lora.r=16", "lora.alpha=64", "train.lr=3e-3", "train.projector_lr=1e-2", "train.max_steps=100"],
             "stage2_lora.yaml"),
}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> ColourTask:
    return make_colour_task(tmp_path_factory.mktemp("colours"))


def assert_reads_images(result: dict, task: ColourTask) -> None:
    assert result["held_out"] >= THRESHOLD, (
        f"held-out accuracy {result['held_out']:.2f} < {THRESHOLD}: the model did not learn to read its image "
        f"(answers: {result['answers']})")
    assert result["other_image"] <= task.chance + CONTROL_MARGIN, (
        f"asked about another image, the model still gave the question's own colour {result['other_image']:.2f} "
        f"of the time (chance {task.chance:.2f}): the answer does not come from the image it is shown")
    assert result["follows_other"] >= THRESHOLD, (
        f"asked about another image, the model gave that image's colour only {result['follows_other']:.2f} of the time")


@pytest.mark.parametrize("variant", [
    "fp32",
    pytest.param("bf16", marks=pytest.mark.slow),
    pytest.param("packing", marks=pytest.mark.slow),
    pytest.param("lora", marks=pytest.mark.slow),
])
def test_learns_to_read_the_image(tiny_lm, task, tmp_path, variant):
    stage1, stage2, config = VARIANTS[variant]
    out = train_two_stages(tiny_lm, task, tmp_path, stage1, stage2, config)
    assert_reads_images(score(out, task), task)


def test_guard_trips_when_nothing_is_learned(tiny_lm, task, tmp_path):
    """The same runs with lr 0: the guard must fail them (it can fail), and the model is at chance or below."""
    out = train_two_stages(tiny_lm, task, tmp_path, ["train.lr=0"], ["train.lr=0"])
    result = score(out, task)
    with pytest.raises(AssertionError, match="did not learn to read"):
        assert_reads_images(result, task)
    assert result["held_out"] <= task.chance + CONTROL_MARGIN, result
