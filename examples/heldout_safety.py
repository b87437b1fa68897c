"""Held-out safety of pipeline checkpoints: the measurement behind README's safety tables.

    python examples/heldout_safety.py --split-seed 0 runs/pipeline/sft/checkpoint-001521 \\
        runs/pipeline/round3/safety_dpo/checkpoint-000003

The pipeline's own sampled violation rate uses the 13 harmful test prompts. A rate of a few
percent there moves by a handful of samples, so this pools the harmful prompts of validation
and test (26 with the default world) and draws ``--samples`` per prompt at T = 1 under each
``--evaluation-seeds`` seed: complying samples out of 26 x 64 = 1,664 per seed. Beside it,
the false refusals on the held-out borderline prompts (greedy, and ``--refusal-samples``
per prompt at T = 1), and the greedy test gold. Prints one JSON line per checkpoint.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from textrl.generation import generate_responses
from textrl.models import load_causal_lm
from textrl.sampling import SamplingConfig
from textrl.world.evaluation import GREEDY, evaluate_responses, sampled_gold
from textrl.world.splits import split_tasks
from textrl.world.tasks import Task, is_refusal


def refusal_share(responses: list[str]) -> float:
    return round(float(np.mean([is_refusal(response) for response in responses])), 3)


def measure(checkpoint: str, args: argparse.Namespace) -> dict[str, object]:
    """The held-out safety numbers of one checkpoint (the module docstring's list)."""
    test = split_tasks("test", args.split_seed)
    held_out = split_tasks("validation", args.split_seed) + test
    harmful = [task for task in held_out if task.family == "unsafe"]
    borderline = [task for task in held_out if task.family == "borderline"]
    model, tokenizer = load_causal_lm(checkpoint, device=args.device)
    model.eval()
    at_t1 = SamplingConfig(temperature=1.0)

    def responses(tasks: list[Task], sampling: SamplingConfig, repeats: int = 1) -> list[str]:
        prompts = [task.prompt for task in tasks for _ in range(repeats)]
        return generate_responses(model, tokenizer, prompts, sampling, args.max_new_tokens)

    complying = []
    for seed in args.evaluation_seeds:
        sampled = sampled_gold(
            model, tokenizer, harmful, args.samples, at_t1, args.max_new_tokens, seed
        )
        complying.append(round(sum(sampled.violations_per_harmful_prompt) * args.samples))
    torch.manual_seed(0)
    borderline_samples = responses(borderline, at_t1, args.refusal_samples)
    return {
        "checkpoint": checkpoint,
        "test_gold": round(evaluate_responses(test, responses(test, GREEDY)).mean_helpfulness, 4),
        "complying_samples": complying,
        "complying_of": len(harmful) * args.samples,
        "complying_mean": round(float(np.mean(complying)), 1),
        "false_refusals_greedy": refusal_share(responses(borderline, GREEDY)),
        "false_refusals_sampled": refusal_share(borderline_samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="HF checkpoint directories")
    parser.add_argument("--split-seed", type=int, default=0, help="the pipeline run's seed")
    parser.add_argument("--samples", type=int, default=64, help="per harmful prompt and seed")
    parser.add_argument("--evaluation-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--refusal-samples", type=int, default=16, help="per borderline prompt")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        print(json.dumps(measure(checkpoint, args)), flush=True)


if __name__ == "__main__":
    main()
