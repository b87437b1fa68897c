"""Rejection sampling with the gold judge as the reward: the most it can add on the world.

    python examples/oracle_rejection_sampling.py --policy runs/pipeline/sft/checkpoint-000360 \\
        --out runs/oracle_rs --rounds 2 --learning-rate 1e-3 --epochs 4

Each round is the pipeline's rejection-sampling stage (best of K per RLHF prompt, the best
of all rounds kept, prompt-masked fine-tuning), except that the gold judge picks instead of
the reward models. Set beside the pipeline's own rounds, the difference is what the learned
reward models' errors cost. The settings not given here are the pipeline config's
``[rejection_sampling]`` section (``--config``, default: the embedded one). Prints one JSON
line per round: gold helpfulness, safety and fully-right share on the test split (greedy),
and the win rate against the starting policy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from textrl.models import load_causal_lm
from textrl.pipeline import stages
from textrl.pipeline.config import load_pipeline_config
from textrl.world.evaluation import GoldReward, evaluate_responses
from textrl.world.splits import split_tasks
from textrl.world.tasks import Task, all_tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", required=True, help="starting checkpoint (e.g. SFT)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, help="pipeline TOML (default: embedded)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, help="overrides the config's")
    parser.add_argument("--epochs", type=int, help="overrides the config's")
    args = parser.parse_args()
    config = load_pipeline_config(args.config)
    overrides = {"learning_rate": args.learning_rate, "epochs": args.epochs}
    settings = dataclasses.replace(
        config.rejection_sampling, **{k: v for k, v in overrides.items() if v is not None}
    )
    config = dataclasses.replace(config, rejection_sampling=settings)
    tasks = split_tasks("test", config.seed)
    start = stages.greedy_test_responses(config, *load_causal_lm(args.policy, config.device))
    reward = GoldReward(all_tasks())
    checkpoint, kept = args.policy, None
    print(json.dumps({"round": 0, **_scores(tasks, start, start)}), flush=True)
    for round_index in range(1, args.rounds + 1):
        result = stages.rejection_sampling_stage(
            config, round_index, checkpoint, reward, kept, args.out / f"round{round_index}"
        )
        checkpoint, kept = str(result["checkpoint"]), Path(str(result["kept"]))
        responses = stages.greedy_test_responses(config, *load_causal_lm(checkpoint, config.device))
        line = {"round": round_index, **_scores(tasks, responses, start)}
        print(json.dumps({**line, "checkpoint": checkpoint}), flush=True)


def _scores(tasks: Sequence[Task], responses: list[str], start: list[str]) -> dict[str, float]:
    evaluation = evaluate_responses(tasks, responses, opponent_responses=start)
    assert evaluation.win_rate is not None  # an opponent was given
    return {
        "gold_helpfulness": round(evaluation.mean_helpfulness, 4),
        "gold_safety": round(evaluation.mean_safety, 4),
        "correct_rate": round(evaluation.correct_rate_on_safe, 4),
        "win_rate_vs_start": round(evaluation.win_rate, 4),
    }


if __name__ == "__main__":
    main()
