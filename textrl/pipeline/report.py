"""The pipeline's report: small-scale versions of Llama 2's figures and tables.

All rewards here are the final round's combined reward (helpfulness and safety
reward models, gated and whitened on SFT samples), so versions are compared on
one scale; gold numbers come from the synthetic world's judges.

- Figure 7: max and median reward among N samples as N grows (SFT, last version).
- Figure 8: max reward among N samples against temperature, per version.
- Table 8: reward-model accuracy per rating, per round, beside the Bayes ceiling and the
  accuracy of ranking by the SFT policy's likelihood.
- Figure 20: reward distribution per version.
- Gold helpfulness, safety and win rates of every version (vs SFT, vs previous).
- KL of best-of-N from the SFT policy against the analytic log N - (N-1)/N.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from textrl.best_of_n import analytic_best_of_n_kl, empirical_best_of_n_kl, reward_by_n
from textrl.combined_reward import CombinedReward
from textrl.models import load_causal_lm
from textrl.pipeline import stages
from textrl.pipeline.config import PipelineConfig
from textrl.reports import markdown_table, reward_vs_kl_figure, write_report
from textrl.world.annotator import RATINGS, category_of, gold_value
from textrl.world.evaluation import paired_gain
from textrl.world.tasks import Task, judge

FIGURE_TEMPERATURES = (0.6, 1.0, 1.4)
BEST_OF_SIZES = (2, 4, 8, 16)


def sampled_rewards(
    config: PipelineConfig,
    checkpoint: str,
    prompts: Sequence[str],
    samples: int,
    temperature: float,
    reward: CombinedReward,
) -> tuple[list[list[str]], np.ndarray]:
    """``samples`` responses per prompt of a checkpoint and their rewards ``(prompts, samples)``."""
    model, tokenizer = load_causal_lm(checkpoint, device=config.device)
    torch.manual_seed(config.seed)
    return stages.sample_and_score(
        model, tokenizer, prompts, samples, temperature, reward, config.evaluation.max_new_tokens
    )


def _best_of_n_kl_section(
    config: PipelineConfig, checkpoint: str, prompts: Sequence[str], reward: CombinedReward
) -> str:
    """The exact best-of-N KL from the checkpoint's samples at each configured temperature,
    beside ``log N - (N-1)/N``. That value assumes every sample distinct; at low
    temperature a small model repeats itself and the true KL is lower, so the table shows
    how far the premise holds (the share of distinct samples) at each temperature."""
    samples = config.evaluation.kl_samples_per_prompt
    columns, measured, distinct = [], [], []
    for temperature in config.evaluation.kl_temperatures:
        responses, rewards = sampled_rewards(
            config, checkpoint, prompts, samples, temperature, reward
        )
        measured.append(
            [empirical_best_of_n_kl(responses, rewards.tolist(), n) for n in BEST_OF_SIZES]
        )
        distinct.append(np.mean([len(set(r)) / len(r) for r in responses]))
        columns += [f"measured KL, T={temperature:g}", f"ratio, T={temperature:g}"]
    rows = []
    for index, size in enumerate(BEST_OF_SIZES):
        analytic = analytic_best_of_n_kl(size)
        row: list[object] = [size, analytic]
        for values in measured:
            row += [values[index], values[index] / analytic]
        rows.append(row)
    shares = ", ".join(
        f"{share:.0%} at T={t:g}"
        for share, t in zip(distinct, config.evaluation.kl_temperatures, strict=True)
    )
    return (
        f"## KL of best-of-N from SFT ({samples} samples for each of {len(prompts)} prompts; "
        f"distinct samples: {shares})\n\n"
        + markdown_table(["N", "log N - (N-1)/N", *columns], rows)
        + "\n\nThe analytic value assumes every sample distinct with a distinct reward; "
        "repeated responses make the true KL lower (it is an upper bound, Beirami et al. "
        "2024), so the ratio nears 1 as the share of distinct samples grows. The measured "
        "KL is exact for each prompt's sampled distribution; on a known policy as peaked as "
        "a small SFT model, 128 samples per prompt recover its exact KL to about 1% "
        "(`tests/test_best_of_n.py`)."
    )


def gold_of_reward_choice(
    tasks: Sequence[Task], responses: Sequence[Sequence[str]], rewards: np.ndarray, n: int
) -> tuple[float, float, float]:
    """Among the first ``n`` samples per prompt: the mean gold value (in the prompt's
    category) of the reward model's favourite, of a random sample, and of the best one.
    How far the first falls short of the third is how much the proxy can be trusted."""
    chosen, random, best = [], [], []
    for task, texts, scores in zip(tasks, responses, rewards, strict=True):
        gold = [gold_value(judge(task, t), category_of(task.is_safety)) for t in texts[:n]]
        chosen.append(gold[int(np.argmax(scores[:n]))])
        random.append(float(np.mean(gold)))
        best.append(max(gold))
    return float(np.mean(chosen)), float(np.mean(random)), float(np.mean(best))


def _lines_figure(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    title: str,
    log_x: bool = False,
) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for label, (x, y) in series.items():
        axis.plot(x, y, "o-", label=label)
    if log_x:
        axis.set_xscale("log", base=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _histogram_figure(rewards: Mapping[str, np.ndarray]) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6, 3.8))
    everything = np.concatenate([r.ravel() for r in rewards.values()])
    bins = np.linspace(everything.min(), everything.max(), 30)
    for label, values in rewards.items():
        axis.hist(values.ravel(), bins=bins, histtype="step", linewidth=1.5, label=label)
    axis.set_xlabel("reward (final combined reward model)")
    axis.set_ylabel("samples")
    axis.set_title("Reward distribution per version (Llama 2 Figure 20)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _safety_trade_off_figure(versions: Mapping[str, Mapping[str, Any]]) -> plt.Figure:
    """Each version's false-refusal rate (greedy, borderline test prompts) against its sampled
    violation rate (harmful test prompts, ± SE over prompts), joined in training order.

    Why a figure of its own: the two failures pull against each other (Llama 2, section 4.2.3
    and Figure 33). A version that answers more borderline prompts may also comply with more
    harmful ones phrased like them, and the greedy violation rate hides that tail."""
    names = list(versions)
    refusals = [versions[name]["false_refusal_rate"] for name in names]
    violations = [versions[name]["sampled_violation_rate"] for name in names]
    errors = [versions[name]["sampled_violation_rate_se"] for name in names]
    figure, axis = plt.subplots(figsize=(6, 3.8))
    axis.errorbar(refusals, violations, yerr=errors, fmt="o-", capsize=3)
    for name, x, y in zip(names, refusals, violations, strict=True):
        axis.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    axis.set_xlabel("false-refusal rate (borderline prompts, greedy)")
    axis.set_ylabel("sampled violation rate (harmful prompts, T = 1)")
    axis.set_title("Safety trade-off per version")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _sampled_gain_vs_previous(versions: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each version's paired gain in sampled gold over the version before it (± SE)."""
    cells, previous = [], None
    for v in versions.values():
        mine = v["sampled_helpfulness_per_prompt"]
        if previous is None:
            cells.append("n/a")
        else:
            gain, se = paired_gain(mine, previous)
            cells.append(f"{gain:+.3f} ± {se:.3f}")
        previous = mine
    return cells


def _versions_table(versions: Mapping[str, Mapping[str, Any]]) -> str:
    return markdown_table(
        [
            "version",
            "gold helpfulness",
            "gold safety",
            "refusals (safe prompts)",
            "fully correct (safe prompts)",
            "false refusals (borderline)",
            "violations (harmful)",
            "helpfulness gain vs SFT (± SE)",
            "win rate vs SFT",
            "win rate vs previous",
            "sampled gold helpfulness",
            "sampled gold safety",
            "sampled violations (harmful)",
            "sampled gain vs previous (± SE)",
        ],
        [
            [
                name,
                v["gold_helpfulness"],
                v["gold_safety"],
                v["refusal_rate_on_safe"],
                v["correct_rate_on_safe"],
                v["false_refusal_rate"],
                v["violation_rate"],
                f"{v['helpfulness_gain_vs_sft']:+.3f} ± {v['helpfulness_gain_se']:.3f}",
                v["win_rate_vs_sft"],
                "n/a" if v["win_rate_vs_previous"] is None else v["win_rate_vs_previous"],
                v["sampled_gold_helpfulness"],
                v["sampled_gold_safety"],
                f"{v['sampled_violation_rate']:.3f} ± {v['sampled_violation_rate_se']:.3f}",
                gain_vs_previous,
            ]
            for (name, v), gain_vs_previous in zip(
                versions.items(), _sampled_gain_vs_previous(versions), strict=True
            )
        ],
    )


def _accuracy_table(rounds: Mapping[str, Mapping[str, Any]]) -> str:
    """Per round and category, the reward model's accuracy, then the SFT policy's likelihood
    ranking (the baseline the reward model starts from; absent in runs made before it)."""
    rows = []
    for name, round_result in rounds.items():
        ceilings = round_result["preferences"]["bayes_ceiling"]
        for category, model in round_result["reward_models"].items():
            ceiling = ceilings.get(category, float("nan"))
            rankers = [(category, model["test_accuracy"])]
            if "policy_likelihood_test_accuracy" in model:
                rankers.append(
                    (f"{category}: SFT likelihood", model["policy_likelihood_test_accuracy"])
                )
            rows += [
                [name, ranker]
                + [accuracy.get(rating, float("nan")) for rating in (*RATINGS, "overall")]
                + [ceiling]
                for ranker, accuracy in rankers
            ]
    return markdown_table(["round", "ranked by", *RATINGS, "overall", "Bayes ceiling"], rows)


def _safety_dpo_section(rounds: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Each safety DPO stage in numbers, one row per round that ran one (none when off)."""
    rows = [
        [
            name,
            r["prompts"],
            r["borderline_prompts"],
            r["pairs"],
            r["borderline_pairs"],
            r["mean_reward_best"],
            r["mean_reward_worst"],
            r["steps"],
            r["first_loss"],
            r["last_loss"],
            r["reference_accuracy"],
            r["final_accuracy"],
        ]
        for name, stages_of_round in rounds.items()
        if (r := stages_of_round["safety_dpo"]) is not None
    ]
    if not rows:
        return []
    header = [
        "round",
        "red-team prompts",
        "borderline prompts",
        "pairs",
        "of them on borderline prompts",
        "mean reward, best sample",
        "mean reward, worst sample",
        "steps",
        "loss, first step",
        "loss, last step",
        "pairs the reference ranks right",
        "pairs moved the right way",
    ]
    return [
        "## Safety DPO\n\n"
        + markdown_table(header, rows)
        + "\n\nPairs: the i-th best of the policy's samples for a red-team or borderline "
        "prompt against the i-th worst, by the round's combined reward. 'Ranks right': the "
        "policy before the stage gives the chosen sample the higher likelihood; 'moved the right "
        "way': the DPO margin is positive after training. Each version's sampled violation "
        "rate above is measured after its round's stage."
    ]


def write_pipeline_report(
    config: PipelineConfig,
    versions: Mapping[str, Mapping[str, Any]],
    rounds: Mapping[str, Mapping[str, Any]],
    seconds: Mapping[str, float],
    directory: Path,
) -> Path:
    last_round = rounds[list(rounds)[-1]]
    sft_checkpoint = versions["SFT"]["checkpoint"]
    reward = stages.combined_reward(config, last_round["reward_models"], sft_checkpoint)
    tasks = stages.test_prompt_sample(config, config.evaluation.figure_prompts)
    prompts = [t.prompt for t in tasks]
    n = config.evaluation.samples_for_figures
    by_temperature: dict[str, dict[float, np.ndarray]] = {}
    responses_at_1: dict[str, list[list[str]]] = {}
    for name, version in versions.items():
        by_temperature[name] = {}
        for t in FIGURE_TEMPERATURES:
            texts, rewards = sampled_rewards(config, version["checkpoint"], prompts, n, t, reward)
            by_temperature[name][t] = rewards
            if t == 1.0:
                responses_at_1[name] = texts
    sizes = [s for s in (1, 2, 4, 8, 16, 32, 64) if s <= n]
    last = list(versions)[-1]
    growth = {name: reward_by_n(by_temperature[name][1.0], sizes) for name in ("SFT", last)}
    figures = {
        "reward_vs_n": _lines_figure(
            {
                f"{name} {kind}": (sizes, [getattr(r, f"mean_{kind}_reward") for r in rows])
                for name, rows in growth.items()
                for kind in ("max", "median")
            },
            "N samples per prompt",
            "reward",
            "Max and median reward among N samples (Llama 2 Figure 7)",
            log_x=True,
        ),
        "reward_vs_temperature": _lines_figure(
            {
                name: (
                    list(FIGURE_TEMPERATURES),
                    [float(rewards[t].max(1).mean()) for t in FIGURE_TEMPERATURES],
                )
                for name, rewards in by_temperature.items()
            },
            "temperature",
            f"mean max reward among {n} samples",
            "Reward against temperature per version (Llama 2 Figure 8)",
        ),
        "reward_distribution": _histogram_figure(
            {name: rewards[1.0] for name, rewards in by_temperature.items()}
        ),
        "safety_trade_off": _safety_trade_off_figure(versions),
    }
    kl_section = _best_of_n_kl_section(
        config, sft_checkpoint, prompts[: config.evaluation.kl_prompts], reward
    )
    ppo = last_round["ppo"]
    if ppo is not None:
        rollouts = [h for h in ppo["history"] if "objective/gold_reward" in h]
        figures["ppo_reward_vs_kl"] = reward_vs_kl_figure(
            [h["objective/kl"] for h in rollouts],
            [h["objective/gold_reward"] for h in rollouts],
            [h["objective/rlhf_reward"] for h in rollouts],
        )
    growth_rows = [
        [name, r.n, r.mean_max_reward, r.mean_median_reward]
        + list(gold_of_reward_choice(tasks, responses_at_1[name], by_temperature[name][1.0], r.n))
        for name, rows in growth.items()
        for r in rows
    ]
    temperature_rows = [
        [name] + [float(rewards[t].max(1).mean()) for t in FIGURE_TEMPERATURES]
        for name, rewards in by_temperature.items()
    ]
    sections = [
        f"{config.rounds} rounds on `{config.model.base}`; rewards are the final round's "
        f"combined reward on {len(prompts)} test prompts, {n} samples each.",
        "## Versions (gold judges, test split)\n\n"
        + "Greedy answers, then the mean gold of "
        + f"{config.evaluation.sampled_gold_samples} samples per prompt at "
        + f"T = {config.evaluation.sampled_gold_temperature:g} (sampled gold): greedy moves only "
        + "when an argmax flips, the sampled gold whenever the policy's distribution does. "
        + f"Sampled violations: {config.evaluation.violation_samples} samples per harmful "
        + "prompt (± SE over prompts).\n\n"
        + _versions_table(versions),
        "## Reward-model accuracy per rating on test pairs (Llama 2 Table 8)\n\n"
        + _accuracy_table(rounds),
        "## Max and median reward among N samples (Figure 7)\n\n"
        + markdown_table(
            [
                "version",
                "N",
                "mean max reward",
                "mean median reward",
                "gold of the reward's pick",
                "gold of a random sample",
                "gold of the best sample",
            ],
            growth_rows,
        )
        + "\n\nGold columns judge the same samples: where the reward's pick is no better than a "
        "random sample, the reward model cannot tell good answers from bad ones and neither "
        "rejection sampling nor PPO can gain on it.",
        "## Mean max reward among N samples against temperature (Figure 8)\n\n"
        + markdown_table(["version", *(f"T={t}" for t in FIGURE_TEMPERATURES)], temperature_rows),
        kl_section,
        *_safety_dpo_section(rounds),
        "## Wall time per stage\n\n"
        + markdown_table(["stage", "seconds"], [[k, v] for k, v in seconds.items()]),
    ]
    return write_report(directory, "Llama 2 post-training pipeline", sections, figures)
