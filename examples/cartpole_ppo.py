"""Train PPO on CartPole-v1 (or any Gymnasium classic-control task) and evaluate it.

    python examples/cartpole_ppo.py                      # CartPole-v1 to 500
    python examples/cartpole_ppo.py --env-id Pendulum-v1 # continuous actions
    python examples/cartpole_ppo.py --vector subproc     # one process per env copy
    python examples/cartpole_ppo.py --vector ray         # one Ray actor per env copy
    tensorboard --logdir runs

Per-task defaults come from ``agents.classic_control.PRESETS``. Training stops
once a deterministic evaluation (every ``eval_every_steps``) reaches the task's
reward threshold or the step budget is spent. The last line printed is one
JSON object: ``env_id, seed, env_steps, seconds, eval_mean_return``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import get_args

import gymnasium as gym
import torch
from tianshou.algorithm.algorithm_base import policy_within_training_step

from agents.classic_control import build_training, preset, report_run, with_overrides
from envs.vector import VectorMode
from textrl.checkpoint import save_atomically


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-id", default="CartPole-v1", help="Gymnasium task id")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--total-steps", type=int, default=None, help="env-step budget (preset's by default)"
    )
    parser.add_argument(
        "--num-envs", type=int, default=None, help="parallel environments (preset's by default)"
    )
    parser.add_argument(
        "--vector",
        choices=get_args(VectorMode),
        default=None,
        help="auto (native/in-process), sync, subproc: one worker process per env copy, or "
        "ray: one Ray actor per copy (pip install 'textrl[ray]'), for environments whose step "
        "is CPU-heavy (preset's by default)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest for small MLPs)"
    )
    parser.add_argument(
        "--log-dir", type=Path, default=None, help="TensorBoard directory (runs/<env>-seed<k>)"
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="where to save the trained algorithm (checkpoints/<env>-seed<k>.pt)",
    )
    parser.add_argument(
        "--eval-episodes", type=int, default=20, help="episodes per deterministic evaluation"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.env_id not in gym.registry:
        parser.error(f"unknown --env-id {args.env_id!r}: not a registered Gymnasium id")
    return args


def main(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was requested but torch sees no CUDA device")
    run_name = f"{args.env_id}-seed{args.seed}"
    log_dir = args.log_dir or Path("runs") / run_name
    checkpoint = args.checkpoint or Path("checkpoints") / f"{run_name}.pt"
    config = with_overrides(
        preset(args.env_id),
        total_steps=args.total_steps,
        num_envs=args.num_envs,
        vector=args.vector,
        eval_episodes=args.eval_episodes,
    )
    training = build_training(
        config,
        seed=args.seed,
        device=args.device,
        log_dir=log_dir,
        show_progress=not args.no_progress,
    )
    start = time.perf_counter()
    info = training.algorithm.run_training(training.trainer_params)
    seconds = time.perf_counter() - start
    save_atomically({"config": config, "algorithm": training.algorithm.state_dict()}, checkpoint)
    with policy_within_training_step(training.algorithm.policy, enabled=False):
        evaluation = training.test_collector.collect(n_episode=args.eval_episodes)
    assert evaluation.returns_stat is not None
    if training.writer is not None:
        training.writer.add_scalar(
            "final/eval_mean_return", evaluation.returns_stat.mean, info.train_step
        )
        training.writer.close()
    print(f"TensorBoard logs: {log_dir}   checkpoint: {checkpoint}")
    return report_run(
        args.env_id, args.seed, info.train_step, seconds, float(evaluation.returns_stat.mean)
    )


if __name__ == "__main__":
    main(parse_args())
