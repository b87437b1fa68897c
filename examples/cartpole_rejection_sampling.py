"""Rejection sampling (best-of-K behaviour cloning) on CartPole-v1, evaluated deterministically.

    python examples/cartpole_rejection_sampling.py          # CartPole-v1 to 500
    tensorboard --logdir runs

Each round draws K episodes from each of ``start_states`` start states with the
stochastic policy, keeps the best episode of each start state and clones its
actions (``agents.RejectionSampling``): a cross-entropy-method loop, the
CartPole form of Llama 2's rejection-sampling fine-tuning. Training stops once a
deterministic evaluation (every ``eval_every_steps``) reaches ``solved_return``
or the step budget is spent (checked at each evaluation). The last line printed
is one JSON object: ``env_id, seed, env_steps, seconds, eval_mean_return``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import torch
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.trainer import OnPolicyTrainerParams
from tianshou.utils import TensorboardLogger
from torch.utils.tensorboard import SummaryWriter

from agents import MLPActorCriticPolicy, RejectionSampling, SegmentBuffer, VectorEnvCollector
from agents.classic_control import report_run
from envs import make_vector_env
from envs.shared_start import make_shared_start_vector_env
from textrl.checkpoint import save_atomically


@dataclass(frozen=True)
class RejectionSamplingConfig:
    """Everything that defines a rejection-sampling run on a classic-control task."""

    env_id: str = "CartPole-v1"
    """Gymnasium id of the task (discrete or Box actions, flat observations)."""
    total_steps: int = 1_000_000
    """Budget of environment steps (training stops earlier once solved)."""
    start_states: int = 8
    """Start states per round."""
    samples_per_start: int = 16
    """K, episodes sampled from each start state per round."""
    min_return: float | None = None
    """Episodes with a lower return are never kept, or None."""
    keep_best_of_all_rounds: bool = False
    """Train on the best episode of every start state of every round so far."""
    epochs: int = 4
    """Passes over the kept episodes per round."""
    minibatch_size: int = 256
    """Steps per minibatch."""
    learning_rate: float = 3e-3
    """Adam step size."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Widths of the MLP torso."""
    eval_every_steps: int = 5_000
    """Environment steps between deterministic evaluations."""
    eval_episodes: int = 20
    """Episodes per evaluation."""
    solved_return: float = 500.0
    """Stop once the evaluation mean return reaches this."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = RejectionSamplingConfig()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--total-steps", type=int, default=defaults.total_steps)
    parser.add_argument(
        "--start-states", type=int, default=defaults.start_states, help="start states per round"
    )
    parser.add_argument(
        "--samples-per-start", type=int, default=defaults.samples_per_start, help="K"
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument(
        "--minibatch-size", type=int, default=defaults.minibatch_size, help="steps per minibatch"
    )
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument(
        "--keep-best-of-all-rounds",
        action="store_true",
        help="train on the best episode of every round so far (Llama 2, RLHF-V3 on)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for small MLPs)"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="TensorBoard directory (runs/<run name>)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="where to save the trained algorithm (checkpoints/<run name>.pt)",
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=defaults.eval_episodes, help="episodes per evaluation"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> RejectionSamplingConfig:
    return dataclasses.replace(
        RejectionSamplingConfig(),
        total_steps=args.total_steps,
        start_states=args.start_states,
        samples_per_start=args.samples_per_start,
        epochs=args.epochs,
        minibatch_size=args.minibatch_size,
        learning_rate=args.learning_rate,
        keep_best_of_all_rounds=args.keep_best_of_all_rounds,
        eval_episodes=args.eval_episodes,
    )


def episode_step_limit(env_id: str) -> int:
    limit = gym.spec(env_id).max_episode_steps
    if limit is None:
        raise ValueError(
            f"{env_id} has no episode step limit; rejection sampling compares whole episodes, "
            "so register the task with max_episode_steps"
        )
    return limit


def main(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch sees no CUDA device")
    config = config_from_args(args)
    run_name = f"{config.env_id}-rejection-sampling-seed{args.seed}"
    log_dir = args.log_dir or Path("runs") / run_name
    checkpoint = args.checkpoint or Path("checkpoints") / f"{run_name}.pt"
    torch.manual_seed(args.seed)
    num_envs = config.start_states * config.samples_per_start
    training_env = make_shared_start_vector_env(
        config.env_id, config.start_states, config.samples_per_start
    )
    test_env = make_vector_env(config.env_id, config.eval_episodes)
    policy = MLPActorCriticPolicy(
        observation_space=training_env.single_observation_space,
        action_space=training_env.single_action_space,
        hidden_sizes=config.hidden_sizes,
    ).to(args.device)
    algorithm = RejectionSampling(
        policy=policy,
        optim=AdamOptimizerFactory(lr=config.learning_rate),
        samples_per_start=config.samples_per_start,
        min_return=config.min_return,
        keep_best_of_all_rounds=config.keep_best_of_all_rounds,
        max_grad_norm=config.max_grad_norm,
    )
    # one whole episode per environment per round: room for every one to run to the limit
    buffer = SegmentBuffer(num_envs * episode_step_limit(config.env_id))
    training_collector = VectorEnvCollector(algorithm, training_env, buffer, seed=args.seed)
    test_collector = VectorEnvCollector(algorithm, test_env, seed=args.seed + 10_000)
    writer = SummaryWriter(str(log_dir))
    eval_every_steps = min(config.eval_every_steps, config.total_steps)
    trainer_params = OnPolicyTrainerParams(
        training_collector=training_collector,
        test_collector=test_collector,
        max_epochs=math.ceil(config.total_steps / eval_every_steps),
        epoch_num_steps=eval_every_steps,
        collection_step_num_env_steps=None,
        collection_step_num_episodes=num_envs,
        test_step_num_episodes=config.eval_episodes,
        batch_size=config.minibatch_size,
        update_step_num_repetitions=config.epochs,
        # rounds vary in length, so epochs overshoot their steps: check the budget here too
        stop_fn=lambda mean_return: (
            mean_return >= config.solved_return
            or training_collector.collect_step >= config.total_steps
        ),
        logger=TensorboardLogger(writer, update_interval=1),
        show_progress=not args.no_progress,
        verbose=False,
    )
    start = time.perf_counter()
    info = algorithm.run_training(trainer_params)
    seconds = time.perf_counter() - start
    save_atomically({"config": config, "algorithm": algorithm.state_dict()}, checkpoint)
    with policy_within_training_step(policy, enabled=False):
        evaluation = test_collector.collect(n_episode=config.eval_episodes)
    assert evaluation.returns_stat is not None
    writer.add_scalar("final/eval_mean_return", evaluation.returns_stat.mean, info.train_step)
    writer.close()
    print(f"TensorBoard logs: {log_dir}   checkpoint: {checkpoint}")
    return report_run(
        config.env_id, args.seed, info.train_step, seconds, float(evaluation.returns_stat.mean)
    )


if __name__ == "__main__":
    main(parse_args())
