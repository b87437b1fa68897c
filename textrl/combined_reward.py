"""Llama 2's combined reward from a helpfulness and a safety reward model (section 3.2.3).

    R_c = R_s  if is_safety(prompt) or R_s < 0.15  else R_h
    R   = WHITEN(LOGIT(R_c))

``R_h = sigmoid(helpfulness RM output)`` and ``R_s = sigmoid(safety RM output)``
are scores in (0, 1); ``LOGIT`` (the inverse sigmoid) maps the chosen score back
to the reward model's scale, and ``WHITEN`` standardises it with a mean and a
standard deviation measured once on a calibration set, so PPO sees rewards of
unit scale whatever the reward models' offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textrl.generation import generate_responses
from textrl.reward_model import load_reward_model, score
from textrl.sampling import SamplingConfig

SAFETY_THRESHOLD = 0.15


def gated_score(
    helpfulness: torch.Tensor,
    safety: torch.Tensor,
    is_safety: torch.Tensor,
    threshold: float = SAFETY_THRESHOLD,
) -> torch.Tensor:
    """``R_c`` from scores in (0, 1), all ``(N,)``."""
    return torch.where(is_safety | (safety < threshold), safety, helpfulness)


@dataclass(frozen=True)
class Whitening:
    """``(x - mean) / std`` with statistics from a calibration set."""

    mean: float
    std: float

    @classmethod
    def fit(cls, values: torch.Tensor) -> Whitening:
        if values.numel() < 2:
            raise ValueError("whitening needs at least two calibration values")
        return cls(mean=values.mean().item(), std=max(values.std().item(), 1e-6))

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return (values - self.mean) / self.std


class CombinedReward:
    """The reward the text environment calls: ``reward(prompts, responses) -> floats``.

    Without a safety model it is the whitened helpfulness logit alone.
    """

    def __init__(
        self,
        helpfulness: tuple[PreTrainedModel, PreTrainedTokenizerBase],
        safety: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None,
        is_safety: Callable[[str], bool],
        calibration_prompts: Sequence[str],
        calibration_responses: Sequence[str],
        threshold: float = SAFETY_THRESHOLD,
    ) -> None:
        self.helpfulness = helpfulness
        self.safety = safety
        self.is_safety = is_safety
        self.threshold = threshold
        self.whitening = Whitening.fit(
            self._logit_of_gated(calibration_prompts, calibration_responses)
        )

    @classmethod
    def calibrated_on_policy(
        cls,
        helpfulness_rm: str,
        safety_rm: str | None,
        is_safety: Mapping[str, bool],
        policy: tuple[PreTrainedModel, PreTrainedTokenizerBase],
        calibration_prompts: Sequence[str],
        sampling: SamplingConfig,
        max_new_tokens: int,
        device: str = "cpu",
    ) -> CombinedReward:
        """Reward models from checkpoints, whitened on ``policy``'s responses to
        ``calibration_prompts``: the responses the reward will score first, so PPO and
        rejection sampling start from rewards of zero mean and unit scale. ``is_safety``
        tags every prompt the reward will see."""
        helpfulness = load_reward_model(helpfulness_rm, device)
        safety = load_reward_model(safety_rm, device) if safety_rm is not None else None
        for reward_model, _ in filter(None, (helpfulness, safety)):
            reward_model.eval()
        responses = generate_responses(*policy, calibration_prompts, sampling, max_new_tokens)
        return cls(helpfulness, safety, is_safety.__getitem__, calibration_prompts, responses)

    @torch.no_grad()
    def _logit_of_gated(self, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        helpfulness = torch.sigmoid(score(*self.helpfulness, prompts, responses).float())
        if self.safety is None:
            return torch.logit(helpfulness, eps=1e-6)
        safety = torch.sigmoid(score(*self.safety, prompts, responses).float())
        tagged = torch.tensor([self.is_safety(p) for p in prompts], device=safety.device)
        return torch.logit(gated_score(helpfulness, safety, tagged, self.threshold), eps=1e-6)

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self.whitening(self._logit_of_gated(prompts, responses)).cpu().tolist()
