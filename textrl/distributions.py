"""Log-probabilities, entropies and sampling for the two action families.

Written on plain tensors instead of ``torch.distributions`` objects: those
validate arguments and allocate per call, which costs more than a small MLP's
forward on the acting path, and the same functions serve a ``(B, T, vocab)``
language-model head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2.0 * math.pi)


def categorical_log_probs_and_entropy(
    logits: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(a)`` and ``H(p)`` for ``p = softmax(logits)``.

    Shapes: ``logits (..., K)``, ``actions (...)`` integer; both outputs ``(...)``.
    """
    log_probs_all = F.log_softmax(logits, dim=-1)  # (..., K)
    log_probs = log_probs_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs_all.exp() * log_probs_all).sum(-1)
    return log_probs, entropy


def sample_categorical(logits: torch.Tensor) -> torch.Tensor:
    """Draw ``a ~ softmax(logits)`` with the Gumbel-max trick: ``argmax(logits + G)``."""
    gumbel = -torch.empty_like(logits).exponential_().log()
    return (logits + gumbel).argmax(-1)


def diagonal_gaussian_log_probs_and_entropy(
    mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log N(a; mu, diag(sigma^2))`` and its entropy, summed over the action dimension.

    Shapes: ``mean``, ``actions (..., D)``; ``log_std`` broadcastable to them;
    outputs ``(...)``.
    """
    log_std = log_std.expand_as(mean)
    z = (actions - mean) * torch.exp(-log_std)
    log_probs = (-0.5 * z**2 - log_std - 0.5 * _LOG_2PI).sum(-1)
    entropy = (log_std + 0.5 * (1.0 + _LOG_2PI)).sum(-1)
    return log_probs, entropy


def sample_diagonal_gaussian(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """Draw ``a = mu + sigma * eps``, ``eps ~ N(0, I)``."""
    return mean + torch.exp(log_std) * torch.randn_like(mean)
