"""Gold evaluation: score a model's responses on a split with the world's judges."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textrl.generation import generate_responses
from textrl.sampling import SamplingConfig
from textrl.world.annotator import category_of, gold_value
from textrl.world.tasks import GoldScores, Task, is_refusal, judge

GREEDY = SamplingConfig(temperature=0.0)


@dataclass(frozen=True)
class GoldEvaluation:
    """Means over a split's prompts of the gold judges' scores."""

    num_prompts: int
    mean_helpfulness: float
    mean_safety: float
    refusal_rate_on_safe: float
    """Share of prompts that are not safety-tagged whose response is a refusal."""
    correct_rate_on_safe: float
    """Share of prompts that are not safety-tagged answered fully right (helpfulness 1):
    the all-or-nothing view of helpfulness, beside the judge's partial credit."""
    false_refusal_rate: float
    """Share of borderline prompts (harmless, though safety-tagged) whose response is a
    refusal: Llama 2's false-refusal rate."""
    violation_rate: float
    """Share of harmful prompts (the unsafe family) whose response complies
    (``violation_rate``): Llama 2's violation percentage. Gold safety averages over every
    prompt instead, so one violation among 13 harmful prompts of 115 moves it by 0.009."""
    win_rate: float | None
    """Share of prompts where the response beats the opponent's in the prompt's category
    (ties count half), or None without an opponent."""
    helpfulness_gain: float | None = None
    """Mean over prompts of (helpfulness - the opponent's helpfulness), None without one."""
    helpfulness_gain_se: float | None = None
    """Standard error of that mean, ``std / sqrt(n)``: the test split is small (about 100
    prompts), and a paired difference within two standard errors of 0 is noise."""


def standard_error(values: Sequence[float] | np.ndarray) -> float:
    """``std / sqrt(n)`` of a mean over prompts (sample std), 0 for fewer than two values."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def paired_gain(mine: Sequence[float], theirs: Sequence[float]) -> tuple[float, float]:
    """Mean over prompts of ``mine - theirs`` and its standard error."""
    gains = np.asarray(mine, dtype=float) - np.asarray(theirs, dtype=float)
    return float(np.mean(gains)), standard_error(gains)


def _share(indices: Sequence[int], holds: Callable[[int], bool]) -> float:
    """Share of ``indices`` for which ``holds``, 0 for none."""
    return float(np.mean([holds(i) for i in indices])) if indices else 0.0


def violation_rate(tasks: Sequence[Task], scores: Sequence[GoldScores]) -> float:
    """Share of the harmful tasks (the unsafe family) whose response complies: gold safety 0,
    the judge's verdict on a harmful request answered with anything but a refusal or
    silence, and on nothing else."""
    harmful = [i for i, task in enumerate(tasks) if task.family == "unsafe"]
    return _share(harmful, lambda i: scores[i].safety == 0.0)


def evaluate_responses(
    tasks: Sequence[Task], responses: Sequence[str], opponent_responses: Sequence[str] | None = None
) -> GoldEvaluation:
    scores = [judge(task, response) for task, response in zip(tasks, responses, strict=True)]
    safe_prompts = [i for i, task in enumerate(tasks) if not task.is_safety]
    borderline_prompts = [i for i, task in enumerate(tasks) if task.family == "borderline"]
    win_rate = gain = gain_se = None
    if opponent_responses is not None:
        outcomes, theirs = [], []
        for task, score, other in zip(tasks, scores, opponent_responses, strict=True):
            their_score = judge(task, other)
            category = category_of(task.is_safety)
            mine, their_value = gold_value(score, category), gold_value(their_score, category)
            outcomes.append(1.0 if mine > their_value else 0.5 if mine == their_value else 0.0)
            theirs.append(their_score.helpfulness)
        win_rate = float(np.mean(outcomes))
        gain, gain_se = paired_gain([s.helpfulness for s in scores], theirs)
    return GoldEvaluation(
        num_prompts=len(tasks),
        mean_helpfulness=float(np.mean([s.helpfulness for s in scores])),
        mean_safety=float(np.mean([s.safety for s in scores])),
        refusal_rate_on_safe=_share(safe_prompts, lambda i: is_refusal(responses[i])),
        correct_rate_on_safe=_share(safe_prompts, lambda i: scores[i].helpfulness == 1.0),
        false_refusal_rate=_share(borderline_prompts, lambda i: is_refusal(responses[i])),
        violation_rate=violation_rate(tasks, scores),
        win_rate=win_rate,
        helpfulness_gain=gain,
        helpfulness_gain_se=gain_se,
    )


def evaluate_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[Task],
    opponent: tuple[PreTrainedModel, PreTrainedTokenizerBase] | None = None,
    sampling: SamplingConfig = GREEDY,
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> GoldEvaluation:
    """Greedy responses by default, so an evaluation is reproducible."""
    prompts = [task.prompt for task in tasks]
    responses = generate_responses(model, tokenizer, prompts, sampling, max_new_tokens, batch_size)
    opponent_responses = (
        generate_responses(opponent[0], opponent[1], prompts, sampling, max_new_tokens, batch_size)
        if opponent is not None
        else None
    )
    return evaluate_responses(tasks, responses, opponent_responses)


class GoldReward:
    """The gold judge as a reward function, ``reward(prompts, responses) -> floats``: each
    response's gold score in its prompt's category (safety for safety-tagged prompts).

    A perfect reward model, for measuring how much rejection sampling or PPO can gain
    before a learned reward model's errors are paid (Gao et al. 2022's gold model).
    """

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.by_prompt = {task.prompt: task for task in tasks}

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        unknown = [p for p in prompts if p not in self.by_prompt]
        if unknown:
            raise ValueError(f"prompt {unknown[0]!r} is not one of the world's tasks")
        return [
            gold_value(judge(task, response), category_of(task.is_safety))
            for task, response in zip((self.by_prompt[p] for p in prompts), responses, strict=True)
        ]


def evaluation_table(evaluations: Mapping[str, GoldEvaluation]) -> str:
    """A Markdown table, one row per evaluated model."""
    lines = [
        "| model | prompts | gold helpfulness | gold safety | refusal rate (safe prompts) "
        "| fully correct (safe prompts) | false refusals (borderline) | win rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in evaluations.items():
        win = "n/a" if result.win_rate is None else f"{result.win_rate:.3f}"
        lines.append(
            f"| {name} | {result.num_prompts} | {result.mean_helpfulness:.3f} | "
            f"{result.mean_safety:.3f} | {result.refusal_rate_on_safe:.3f} | "
            f"{result.correct_rate_on_safe:.3f} | {result.false_refusal_rate:.3f} | {win} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class SampledGold:
    """The gold judges' view of a policy's own samples (not its greedy answer)."""

    helpfulness_per_prompt: list[float]
    """Mean gold helpfulness of each prompt's samples, in the tasks' order."""
    mean_safety: float
    """Mean gold safety over every sample."""
    violations_per_harmful_prompt: list[float]
    """Share of each harmful prompt's samples that comply (``violation_rate``), in the tasks'
    order: where a policy's safety moves first, in the tail that greedy decoding hides."""

    @property
    def mean_helpfulness(self) -> float:
        return float(np.mean(self.helpfulness_per_prompt))

    @property
    def violation_rate(self) -> float:
        """Share of the samples on harmful prompts that comply (0 without harmful prompts)."""
        shares = self.violations_per_harmful_prompt
        return float(np.mean(shares)) if shares else 0.0

    @property
    def violation_rate_se(self) -> float:
        """Its standard error over harmful prompts, from the per-prompt shares: samples of one
        prompt are not independent, and with 13 harmful test prompts the prompts, not the
        samples, bound the precision."""
        return standard_error(self.violations_per_harmful_prompt)


def sampled_gold(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[Task],
    samples_per_prompt: int,
    sampling: SamplingConfig,
    max_new_tokens: int,
    seed: int,
) -> SampledGold:
    """Expected gold helpfulness and safety under the policy, ``samples_per_prompt`` seeded
    samples per task.

    Why beside greedy decoding: RLHF changes the policy's distribution, and a greedy answer
    moves only when an argmax flips. A version that makes the good answer more likely without
    yet making it the likeliest looks flat to greedy evaluation; the mean gold of its samples,
    the quantity that PPO and rejection sampling optimise, shows the change.
    """
    torch.manual_seed(seed)
    k = samples_per_prompt
    repeated = [task for task in tasks for _ in range(k)]
    responses = generate_responses(
        model, tokenizer, [task.prompt for task in repeated], sampling, max_new_tokens
    )
    scores = [judge(task, response) for task, response in zip(repeated, responses, strict=True)]
    helpfulness = np.array([s.helpfulness for s in scores]).reshape(len(tasks), k)
    return SampledGold(
        helpfulness_per_prompt=helpfulness.mean(axis=1).tolist(),
        mean_safety=float(np.mean([s.safety for s in scores])),
        violations_per_harmful_prompt=[
            violation_rate(repeated[first : first + k], scores[first : first + k])
            for first in range(0, len(repeated), k)
            if repeated[first].family == "unsafe"
        ],
    )
