"""Next-token sampling with temperature, top-k and top-p (nucleus) filtering.

The log-probability returned for a sampled token is taken under the
temperature-scaled *unfiltered* distribution, the one PPO re-evaluates later
(TRL does the same); top-k/top-p only decide which tokens may be drawn.
Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration",
arXiv:1904.09751, for top-p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is drawn."""

    temperature: float = 1.0
    """Logits are divided by it; 0 means greedy decoding."""
    top_k: int | None = None
    """Keep only the k most likely tokens, or None."""
    top_p: float | None = None
    """Keep the smallest set of tokens whose probability reaches p, or None."""
    min_new_tokens: int = 0
    """EOS cannot be drawn before this many tokens (HF ``min_new_tokens``); a filter like
    top-k, so reported log-probs stay those of the unfiltered distribution."""

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def scaled_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(logits / T)``; greedy decoding (T = 0) scores with T = 1."""
    return F.log_softmax(logits.float() / (temperature if temperature > 0 else 1.0), dim=-1)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set the logits outside the top-k / top-p set to -inf. ``logits (B, V)``."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # drop a token when the tokens before it already reach top_p (the first always stays)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next_tokens(
    logits: torch.Tensor,
    config: SamplingConfig,
    greedy: bool = False,
    banned: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row; returns ``(tokens (B,), log_probs (B,))``.

    ``banned`` (``(B, V)`` bool) marks tokens that may not be drawn (EOS before
    ``min_new_tokens``); like top-k/top-p it filters, it does not renormalise the
    log-probability reported.
    """
    log_probs = scaled_log_probs(logits, config.temperature)  # (B, V)
    candidates = log_probs if banned is None else log_probs.masked_fill(banned, float("-inf"))
    if greedy or config.temperature == 0:
        tokens = candidates.argmax(-1)
    else:
        filtered = filter_logits(candidates, config.top_k, config.top_p)
        gumbel = -torch.empty_like(filtered).exponential_().log()
        tokens = (filtered + gumbel).argmax(-1)
    return tokens, log_probs.gather(-1, tokens[:, None]).squeeze(-1)
