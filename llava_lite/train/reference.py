"""The model as training found it, kept beside the model that trains: the base of `train.kl_to_base`
(kl.py) and the reference of preference training (preference.py).

    ref = Reference(model, dtype="bfloat16")   # after accelerate.prepare; model unwrapped
    ref.logits(**batch)                        # [S, V] at the S supervised positions, no grad
    ref.token_logps(batch)                     # [S] log-prob of each supervised target token

Under LoRA the reference is the same LM with its adapters disabled (no second copy); under full
fine-tuning a frozen copy of the starting LM in the training dtype (trainable weights are kept in
fp32 for the optimizer; the reference need not be). The starting projector is copied (small), so
image positions are fed as the starting model saw them. Its head runs at the supervised positions
only, as the model's own sparse head does.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F

from llava_lite.constants import IGNORE_INDEX
from llava_lite.model.fusion import fill_slots, image_features
from llava_lite.model.lm import DTYPES, is_peft
from llava_lite.model.packed_attention import decoder_kwargs


class Reference:
    def __init__(self, model, dtype: str = "float32"):
        self.model = model
        self.projector = copy.deepcopy(model.projector).requires_grad_(False).eval()
        self.lm = None if is_peft(model.lm) else copy.deepcopy(model.lm).requires_grad_(False).to(DTYPES[dtype]).eval()

    @torch.no_grad()
    def logits(self, input_ids, labels, attention_mask=None, pixel_values=None, position_ids=None,
               segment_ids=None, image_rows=None, image_sizes=None, **_) -> torch.Tensor:
        """The starting model's logits at the supervised positions: [S, V]."""
        m = self.model
        lm = self.lm if self.lm is not None else m.lm
        adapters_off = m.lm.disable_adapter() if self.lm is None else contextlib.nullcontext()
        with adapters_off:
            embeds = lm.get_input_embeddings()(input_ids)
            if pixel_values is not None and pixel_values.shape[0]:
                feats = image_features(m.vision, self.projector, pixel_values, image_sizes, image_rows)
                embeds = fill_slots(embeds, input_ids, m.image_token_id, feats)
            layout = decoder_kwargs(lm, attention_mask, position_ids, segment_ids, embeds.dtype)
            hidden = lm.get_decoder()(inputs_embeds=embeds, use_cache=False, **layout).last_hidden_state
            keep = labels[:, 1:] != IGNORE_INDEX
            return lm.get_output_embeddings()(hidden[:, :-1][keep])

    def token_logps(self, inputs: dict) -> torch.Tensor:
        """[S] the starting model's log-prob of each supervised target token, in row-major order."""
        targets = inputs["labels"][:, 1:]
        logits = self.logits(**inputs).float()
        return -F.cross_entropy(logits, targets[targets != IGNORE_INDEX], reduction="none")
