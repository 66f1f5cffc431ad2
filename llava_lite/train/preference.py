"""Preference training (train.stage=preference): DPO, IPO and RPO on (prompt, chosen, rejected) pairs.

A batch of B pairs is 2B rows, chosen rows then rejected rows, the images of each pair encoded once
(data/dataset.py Collator, `image_rows`). One forward of the model that trains gives every supervised
token's NLL (its sparse head runs at answer positions only, so a pair costs about two SFT samples);
the reference (reference.py: adapters off under LoRA, else a frozen copy of the starting model) runs
the same rows without grad. Summed per row, they give the answers' log-probs

    pi_c, pi_r   chosen / rejected log-prob under the model that trains
    ref_c, ref_r the same under the reference
    h = (pi_c - ref_c) - (pi_r - ref_r)

    sigmoid (DPO, Rafailov et al. 2023)  loss = -log sigmoid(beta * h)        (ln 2 while model == reference)
    ipo     (Azar et al. 2023)           loss = (h - 1 / (2 beta))^2, log-probs averaged over each answer's tokens
    rpo_alpha > 0 (RPO, Pang et al. 2024) adds rpo_alpha * the chosen answer's mean token NLL

Logged per pair with TRL's names: rewards/chosen = beta (pi_c - ref_c), rewards/rejected,
rewards/margins, rewards/accuracies (chosen reward > rejected reward), logps/chosen, logps/rejected.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from llava_lite.config import PreferenceConfig
from llava_lite.constants import IGNORE_INDEX
from llava_lite.train.reference import Reference

METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")


def row_sums(token_values: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row sums of values given at the supervised positions (row-major, as the sparse head
    returns them), and each row's number of supervised tokens: ([B], [B])."""
    keep = labels[:, 1:] != IGNORE_INDEX
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(labels.shape[0], dtype=token_values.dtype, device=token_values.device)
    return sums.index_add(0, rows, token_values), keep.sum(1)


def preference_loss(pi_c, pi_r, ref_c, ref_r, beta: float, loss: str = "sigmoid", n_c=None, n_r=None,
                    rpo_alpha: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses [B] and per-pair metrics (summed answer log-probs pi_*/ref_*, [B] each;
    n_c / n_r: answer lengths in tokens, needed by ipo and rpo_alpha)."""
    if loss == "ipo":  # IPO's log-probs are averaged over the answer's tokens
        pi_c, ref_c, pi_r, ref_r = pi_c / n_c, ref_c / n_c, pi_r / n_r, ref_r / n_r
    h = (pi_c - ref_c) - (pi_r - ref_r)
    if loss == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {loss!r} (sigmoid | ipo)")
    chosen, rejected = beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()
    stats = {"rewards/chosen": chosen, "rewards/rejected": rejected, "rewards/margins": chosen - rejected,
             "rewards/accuracies": (chosen > rejected).float(), "logps/chosen": pi_c.detach(),
             "logps/rejected": pi_r.detach()}
    if rpo_alpha:
        nll = -(pi_c if loss == "ipo" else pi_c / n_c)  # the chosen answer's mean token NLL
        stats["nll"] = nll.detach()
        losses = losses + rpo_alpha * nll
    return losses, stats


class PreferenceObjective:
    unit = "pairs"

    def __init__(self, model, cfg: PreferenceConfig, dtype: str = "float32"):
        if cfg.beta <= 0:
            raise ValueError(f"preference.beta must be > 0, got {cfg.beta}")
        self.cfg = cfg
        self.reference = Reference(model, dtype)
        self.keys = ("loss", *METRICS, *(("nll",) if cfg.rpo_alpha else ()))  # the stats a step logs

    @staticmethod
    def count(batch: dict) -> int:
        """Pairs in a batch: 2B rows are B pairs; a lone stand-in row (every pair skipped) is none."""
        return batch["input_ids"].shape[0] // 2

    def __call__(self, model, inputs: dict, train: bool = True) -> tuple[torch.Tensor, dict]:
        out = model(**inputs)
        n = self.count(inputs)
        if n == 0:  # every pair of this micro-batch was skipped: a forward that updates nothing
            return out.loss_sum * 0, {}
        labels = inputs["labels"]
        policy, lengths = row_sums(-out.token_nll, labels)
        reference, _ = row_sums(self.reference.token_logps(inputs), labels)
        c = self.cfg
        losses, stats = preference_loss(policy[:n], policy[n:], reference[:n], reference[n:], c.beta, c.loss,
                                        lengths[:n], lengths[n:], c.rpo_alpha)
        total = losses.sum()
        return total, {"loss": total.detach(), **{k: v.sum() for k, v in stats.items()}}
