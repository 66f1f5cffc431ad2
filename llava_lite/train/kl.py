"""KL to the base model during training (`train.kl_to_base`), against forgetting.

    kl = KLToBase(model, beta=0.1, dtype="bfloat16")   # after accelerate.prepare; model unwrapped
    kl.arm(); out = ddp_model(**inputs)                     # the tuned head's logits are captured
    kl_sum = kl.kl_sum(inputs)                              # KL(base || tuned) summed over supervised positions
    loss_sum = out.loss_sum + kl.beta * kl_sum

The tuned forward is the ordinary one (through DDP, so gradients stay in step): a forward hook on
the LM head keeps the logits it computes, which the sparse head computes only at supervised
positions ([S, V]). The base runs the same batch under no_grad and applies its head at the same S
positions, so no logits are computed for image or prompt positions on either side.

The base is a `reference.Reference`: the adapter-free LM under LoRA, a frozen copy of the starting
LM (+2 bytes per parameter in bf16) under full fine-tuning. Memory, beyond plain training: the
base's [S, V] logits and the two log-softmaxes kept for the backward pass, about 3 x S x V x 4 bytes
(S = supervised tokens of a micro-batch; 2048 x 32k vocab is ~0.8 GB), plus the base's no-grad
activations for one forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llava_lite.train.reference import Reference


class KLToBase:
    def __init__(self, model, beta: float, dtype: str = "float32"):
        if beta <= 0:
            raise ValueError(f"kl_to_base must be > 0 to build a reference, got {beta}")
        self.beta = beta
        self.reference = Reference(model, dtype)
        self.armed = False
        self.captured: torch.Tensor | None = None
        head = model.lm.get_output_embeddings()
        self.hook = head.register_forward_hook(self._capture)

    def _capture(self, module, args, output) -> None:
        if self.armed:  # only the tuned training forward; not the base's, nor evaluation
            self.captured, self.armed = output, False

    def arm(self) -> None:
        self.armed, self.captured = True, None

    def close(self) -> None:
        self.hook.remove()

    def kl_sum(self, inputs: dict) -> torch.Tensor:
        """KL(base || tuned) summed over the supervised positions of the batch just run (after arm())."""
        tuned = self.captured
        if tuned is None:
            raise RuntimeError("KLToBase.kl_sum: no tuned logits captured; call arm() before the model's forward")
        self.captured = None
        base = self.reference.logits(**inputs)
        if base.shape != tuned.shape:
            raise RuntimeError(f"base logits {tuple(base.shape)} and tuned logits {tuple(tuned.shape)} differ")
        return kl_base_to_tuned(tuned, base)


def kl_base_to_tuned(tuned_logits: torch.Tensor, base_logits: torch.Tensor) -> torch.Tensor:
    """sum over positions of KL(p_base || p_tuned) = sum p_base (log p_base - log p_tuned); [S, V] -> []."""
    log_tuned = F.log_softmax(tuned_logits.float(), dim=-1)
    log_base = F.log_softmax(base_logits.float(), dim=-1)
    return F.kl_div(log_tuned, log_base, log_target=True, reduction="sum")
