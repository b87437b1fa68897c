"""Losses of the Llama 2 recipe's supervised stages (arXiv:2307.09288, sections 3.1-3.2).

- SFT: next-token cross-entropy on answer tokens only ("we zero-out the loss on
  tokens from the user prompt").
- Reward model: the binary ranking loss with a margin,
  ``-log sigmoid(r_chosen - r_rejected - m(rating))`` (equation 2), with the
  paper's two margin tables (Table 27).
- DPO (Rafailov et al. 2023), the preference loss without a reward model, used after PPO
  (``textrl.preference_optimization``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
"""Label of a token that is not trained on (prompt tokens, padding)."""

MarginTable = Literal["none", "small", "large"]
MARGINS: dict[str, dict[str, float]] = {
    "none": {
        "significantly better": 0.0,
        "better": 0.0,
        "slightly better": 0.0,
        "negligibly better/unsure": 0.0,
    },
    "small": {
        "significantly better": 1.0,
        "better": 2 / 3,
        "slightly better": 1 / 3,
        "negligibly better/unsure": 0.0,
    },
    "large": {
        "significantly better": 3.0,
        "better": 2.0,
        "slightly better": 1.0,
        "negligibly better/unsure": 0.0,
    },
}


def prompt_masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over positions whose label is not ``IGNORE_INDEX``.

    ``logits (B, L, V)`` at position ``i`` predict ``labels[:, i + 1]``.
    """
    predicted = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(L-1), V)
    targets = labels[:, 1:].reshape(-1)
    if (targets != IGNORE_INDEX).sum() == 0:
        raise ValueError("no answer token to train on in this batch (every label is masked)")
    return F.cross_entropy(predicted.float(), targets, ignore_index=IGNORE_INDEX)


def margin_ranking_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margins: torch.Tensor
) -> torch.Tensor:
    """``mean(-log sigmoid(r_chosen - r_rejected - m))`` over pairs, all ``(B,)``."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards - margins).mean()


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """``mean(-log sigmoid(beta * [(pi_w - ref_w) - (pi_l - ref_l)]))`` over pairs: summed
    response log-likelihoods under the policy and the frozen reference, all ``(B,)``.

    ``beta * (log pi - log pi_ref)`` is the implicit reward of a policy that is optimal for a
    KL-regularised objective with coefficient ``beta``, so this is the ranking loss of
    ``margin_ranking_loss`` (no margin) on that reward.
    """
    chosen = policy_chosen - reference_chosen
    rejected = policy_rejected - reference_rejected
    return margin_ranking_loss(beta * chosen, beta * rejected, torch.zeros_like(chosen))


def reward_centering_penalty(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor
) -> torch.Tensor:
    """``mean((r_chosen + r_rejected)^2)`` over pairs (Eisenstein et al. 2023; TRL's
    ``center_rewards_coefficient``).

    The ranking loss only sees differences within a pair, so a reward model may add any
    offset per prompt. Those offsets are large for a small model (several times the spread
    between answers to one prompt), and in PPO they land in the advantages as noise the
    value head must first learn away; this penalty pulls each pair's mean to zero.
    """
    return ((chosen_rewards + rejected_rewards) ** 2).mean()


def margins_for(ratings: list[str], table: MarginTable) -> torch.Tensor:
    """The margin ``m(rating)`` of each pair under ``table``."""
    if table not in MARGINS:
        raise ValueError(f"unknown margin table {table!r}; use one of {sorted(MARGINS)}")
    return torch.tensor([MARGINS[table][rating] for rating in ratings])
