"""The per-prompt reward baseline (ReMax): offsets per prompt cancel, rankings stay."""

from __future__ import annotations

import pytest

from textrl.reward_baseline import BaselinedReward


def offset_reward(prompts, responses):
    """A length score plus a large offset per prompt, as a pairwise-trained model may have."""
    offsets = {"a": 10.0, "b": -7.0}
    return [offsets[p] + len(r) for p, r in zip(prompts, responses, strict=True)]


def test_the_reference_response_scores_zero_and_offsets_cancel():
    reward = BaselinedReward(offset_reward, ["a", "b"], ["xx", "x"])
    assert reward(["a", "b"], ["xx", "x"]) == [0.0, 0.0]
    # the same answer gets the same baselined score whatever its prompt's offset
    assert reward(["a", "b", "a"], ["xxxx", "xxx", ""]) == [2.0, 2.0, -2.0]


def test_rankings_within_a_prompt_are_unchanged():
    reward = BaselinedReward(offset_reward, ["a"], ["xyz"])
    answers = ["x", "xxxxx", "xx"]
    raw = offset_reward(["a"] * 3, answers)
    baselined = reward(["a"] * 3, answers)
    assert sorted(range(3), key=raw.__getitem__) == sorted(range(3), key=baselined.__getitem__)


def test_a_prompt_without_a_reference_response_is_refused():
    reward = BaselinedReward(offset_reward, ["a"], ["x"])
    with pytest.raises(ValueError, match="no reference response for prompt 'b'"):
        reward(["b"], ["x"])
