"""A simulated annotator in the style of Llama 2, section 3.2.1 (arXiv:2307.09288).

Given a prompt and two responses it perceives each response's utility as its
gold score plus Gumbel noise of scale ``noise``, prefers the higher one and
labels the strength of that preference from the perceived margin. The choice
is therefore exactly Bradley-Terry on the gold scores:

    P(A preferred) = sigmoid((s_A - s_B) / noise)

(the difference of two Gumbel variables is logistic). At ``noise = 0`` the
annotator always agrees with the gold scores. The scored dimension is the
pair's category: safety (with helpfulness as the tie-break, ``gold_value``) for
safety-tagged prompts, helpfulness otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from textrl.world.tasks import GoldScores

Rating = Literal["significantly better", "better", "slightly better", "negligibly better/unsure"]
RATINGS: tuple[Rating, ...] = (
    "significantly better",
    "better",
    "slightly better",
    "negligibly better/unsure",
)
Category = Literal["helpfulness", "safety"]
RATING_THRESHOLDS = (0.5, 0.25, 0.1)
"""Perceived margins at or above which a preference is significantly better / better /
slightly better; below the last one it is negligibly better or unsure."""


def rating_for_margin(margin: float) -> Rating:
    for threshold, rating in zip(RATING_THRESHOLDS, RATINGS, strict=False):
        if margin >= threshold:
            return rating
    return RATINGS[-1]


@dataclass(frozen=True)
class Judgement:
    """Which response won (0 = first, 1 = second) and how strongly."""

    preferred: int
    rating: Rating


def category_of(is_safety: bool) -> Category:
    return "safety" if is_safety else "helpfulness"


SAFETY_ANNOTATION_HELPFULNESS_WEIGHT = 0.5
"""Weight of helpfulness in what the safety annotator values, ``safety + 0.5 * helpfulness``."""


def gold_value(scores: GoldScores, category: Category) -> float:
    """What the annotator of ``category`` values in a response.

    Helpfulness annotators value helpfulness. Safety annotators prefer the safer response
    and, of two equally safe ones, the more helpful: on a borderline prompt both an answer
    and a refusal are safe, and a refusal there is the false refusal Llama 2 measured and
    tried to avoid. At weight 0.5 the unsafe family keeps the order of safety alone: a
    polite refusal 1.15, a curt one 0.95, an empty answer 0.5, compliance 0.3.
    """
    if category == "safety":
        return scores.safety + SAFETY_ANNOTATION_HELPFULNESS_WEIGHT * scores.helpfulness
    return scores.helpfulness


class SimulatedAnnotator:
    """Bradley-Terry choices with Gumbel noise of scale ``noise`` on the gold scores."""

    def __init__(self, noise: float = 0.1, seed: int = 0) -> None:
        if noise < 0:
            raise ValueError(f"annotator noise must be >= 0, got {noise}")
        self.noise = noise
        self._rng = np.random.default_rng(seed)

    def compare(self, first: float, second: float) -> Judgement:
        """Judge two responses whose gold scores (in the pair's category) are given."""
        perceived_first = first + self.noise * self._rng.gumbel()
        perceived_second = second + self.noise * self._rng.gumbel()
        if perceived_first == perceived_second:  # a tie at zero noise: unsure, either way
            return Judgement(preferred=int(self._rng.integers(2)), rating=RATINGS[-1])
        preferred = 0 if perceived_first > perceived_second else 1
        return Judgement(preferred, rating_for_margin(abs(perceived_first - perceived_second)))

    @staticmethod
    def agreement_probability(first: float, second: float, noise: float) -> float:
        """Bradley-Terry probability of preferring the response with the higher gold score."""
        return float(agreement(np.array(first - second), noise))


def agreement(gold_gaps: np.ndarray, noise: float) -> np.ndarray:
    """Per pair, the probability ``sigmoid(|gap| / noise)`` that the annotator picks the
    gold-better response (1/2 on a tie, 1 without noise)."""
    gaps = np.abs(np.asarray(gold_gaps, dtype=float))
    if noise == 0:
        return np.where(gaps > 0, 1.0, 0.5)
    return 1.0 / (1.0 + np.exp(-gaps / noise))


def expected_accuracy(gold_gaps: np.ndarray, score_gaps: np.ndarray, noise: float) -> float:
    """A ranker's accuracy on this annotator's labels in expectation over the annotator's
    noise: per pair ``a`` if the ranker orders it as the gold judge does and ``1 - a`` if not
    (``a`` from ``agreement``; 1/2 where either gap is 0). ``score_gaps`` are the ranker's
    ``score(chosen) - score(rejected)``.

    The measured accuracy is one draw of the labels around this; it has the same mean without
    their sampling noise, so two rankers compare with less noise here, and a ranker that
    orders every pair as the gold judge does scores ``bayes_accuracy``.
    """
    gold = np.asarray(gold_gaps, dtype=float)
    scores = np.asarray(score_gaps, dtype=float)
    if gold.shape != scores.shape:
        raise ValueError(f"one score gap per gold gap, got {scores.shape} and {gold.shape}")
    agree = agreement(gold, noise)
    same_order = np.sign(gold) * np.sign(scores)
    return float(np.mean(np.where(same_order > 0, agree, np.where(same_order < 0, 1 - agree, 0.5))))


def bayes_accuracy(gold_gaps: np.ndarray, noise: float) -> float:
    """Best possible accuracy at predicting this annotator's labels, given each pair's gold gap.

    The best predictor picks the gold-better response; the annotator agrees with it
    with probability ``sigmoid(|gap| / noise)`` (1/2 on a tie). No reward model
    trained on these labels can beat the mean of that on held-out pairs.
    """
    return float(np.mean(agreement(gold_gaps, noise)))
