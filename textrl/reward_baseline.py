"""A per-prompt reward baseline: each prompt's reward of a fixed reference response.

    r'(x, y) = r(x, y) - r(x, y_ref(x))

ReMax (Li et al. 2023, arXiv:2310.10505) takes ``y_ref`` as the greedy response. Why it
matters here: the ranking loss of a reward model sees only differences within a pair, so
its scores carry an arbitrary offset per prompt, and with a small model that offset varies
several times more across prompts than the scores of answers to one prompt. PPO's value
head must learn those offsets before its advantages mean anything; subtracting each
prompt's reference score removes them up front. It changes no ranking within a prompt, so
best-of-K selection is unaffected.
"""

from __future__ import annotations

from collections.abc import Sequence

from envs.text_generation import RewardFunction


class BaselinedReward:
    """``reward`` minus the score of ``reference_responses[prompt]``, scored once up front."""

    def __init__(
        self, reward: RewardFunction, prompts: Sequence[str], reference_responses: Sequence[str]
    ) -> None:
        self.reward = reward
        scores = reward(list(prompts), list(reference_responses))
        self.baseline = {prompt: float(s) for prompt, s in zip(prompts, scores, strict=True)}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        unknown = [p for p in prompts if p not in self.baseline]
        if unknown:
            raise ValueError(f"no reference response for prompt {unknown[0]!r}")
        scores = self.reward(prompts, responses)
        return [float(s) - self.baseline[p] for p, s in zip(prompts, scores, strict=True)]
