"""The optimizer and schedule of the Llama 2 supervised stages (SFT and reward models).

AdamW with betas (0.9, 0.95), eps 1e-5 and weight decay on matrices only (not on
norms and biases), and a learning rate that warms up linearly then follows a
cosine to zero (arXiv:2307.09288, sections 2.2 and 3.1-3.2).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

ADAM_BETAS = (0.9, 0.95)
ADAM_EPS = 1e-5
"""Llama 2's AdamW constants (section 2.2), used in every stage."""


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over ``warmup_steps``, then cosine to 0."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def adamw_with_cosine(
    model: torch.nn.Module,
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_fraction: float,
) -> tuple[torch.optim.AdamW, LambdaLR]:
    """AdamW (decay on matrices only) and its warm-up + cosine schedule over ``total_steps``."""
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "norm" not in name]
    no_decay = [p for name, p in model.named_parameters() if p.ndim < 2 or "norm" in name]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=learning_rate,
        betas=ADAM_BETAS,
        eps=ADAM_EPS,
    )
    warmup_steps = max(1, round(warmup_fraction * total_steps))
    return optimizer, LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup_steps))
