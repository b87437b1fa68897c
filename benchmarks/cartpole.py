"""Wall-clock race to solve CartPole-v1: textrl's PPO against Stable-Baselines3 and Tianshou.

Protocol, the same for every system: train until a deterministic evaluation over
20 episodes averages >= 475, evaluating every 10,000 environment steps, with a cap
of 300,000 steps; one CPU thread; seeds 0..N-1. Each (system, seed) run gets its own
fresh child process so that no run inherits another's warm caches or allocator
state, and seeds are interleaved across systems so that drift in machine load hits
all of them alike. Reported seconds exclude evaluation time; total seconds include it.

Systems:
- ``textrl``: ``agents.classic_control``'s CartPole-v1 preset (rl-zoo's tuned PPO).
- ``sb3``: Stable-Baselines3 PPO with rl-zoo's tuned CartPole-v1 hyperparameters
  (rl-baselines3-zoo ``hyperparams/ppo.yml``).
- ``tianshou``: stock Tianshou PPO as configured in Tianshou's own
  ``test/discrete/test_ppo_discrete.py``.

Usage: ``python benchmarks/cartpole.py [--seeds 5] [--systems textrl,sb3] [--json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import PPO as SB3PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv
from tianshou.algorithm import PPO as TianshouPPO
from tianshou.algorithm.algorithm_base import OnPolicyAlgorithm
from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Collector, CollectStats, VectorReplayBuffer
from tianshou.env import DummyVectorEnv
from tianshou.trainer import OnPolicyTrainerParams
from tianshou.utils.net.common import ActorCritic, Net
from tianshou.utils.net.discrete import DiscreteActor, DiscreteCritic
from tianshou.utils.space_info import SpaceInfo
from tqdm import tqdm

from agents.classic_control import build_training, preset

ENV_ID = "CartPole-v1"
SOLVED_RETURN = 475.0
STEP_CAP = 300_000
EVAL_EVERY_STEPS = 10_000
EVAL_EPISODES = 20
EVAL_SEED_OFFSET = 10_000
"""Evaluation environments are seeded ``seed + EVAL_SEED_OFFSET``, apart from training's."""
SYSTEMS = ("textrl", "sb3", "tianshou")


@dataclass(frozen=True)
class RunResult:
    """One (system, seed) run, as the child process reports it on its last stdout line."""

    system: str
    seed: int
    solved: bool
    env_steps: int
    train_seconds: float
    """Wall-clock seconds of training, excluding time spent in evaluations."""
    total_seconds: float
    """Wall-clock seconds of training including evaluations."""


def run_result(
    system: str,
    seed: int,
    reached_solved_return: bool,
    env_steps: int,
    total_seconds: float,
    evaluation_seconds: float,
) -> RunResult:
    """The run's result; a run counts as solved only if it got there within the step cap."""
    return RunResult(
        system=system,
        seed=seed,
        solved=reached_solved_return and env_steps <= STEP_CAP,
        env_steps=env_steps,
        train_seconds=total_seconds - evaluation_seconds,
        total_seconds=total_seconds,
    )


def is_solved(mean_return: float) -> bool:
    """The stopping rule every system uses on its evaluation mean return."""
    return mean_return >= SOLVED_RETURN


def run_tianshou_trainer(
    system: str, seed: int, algorithm: OnPolicyAlgorithm, trainer_params: OnPolicyTrainerParams
) -> RunResult:
    """Train with Tianshou's on-policy trainer; its test collector's time is the evaluation time.

    The trainer also evaluates once before training; that counts as evaluation time too.
    """
    start = time.perf_counter()
    info = algorithm.run_training(trainer_params)
    total_seconds = time.perf_counter() - start
    return run_result(
        system,
        seed,
        reached_solved_return=is_solved(info.best_reward),
        env_steps=info.train_step,
        total_seconds=total_seconds,
        evaluation_seconds=info.timing.test_time,
    )


def run_textrl(seed: int) -> RunResult:
    """This project's PPO through the same wiring as the CartPole example."""
    config = dataclasses.replace(
        preset(ENV_ID),
        total_steps=STEP_CAP,
        eval_every_steps=EVAL_EVERY_STEPS,
        eval_episodes=EVAL_EPISODES,
        solved_return=SOLVED_RETURN,
    )
    training = build_training(config, seed=seed, show_progress=False)
    return run_tianshou_trainer("textrl", seed, training.algorithm, training.trainer_params)


class EvaluateAndStopWhenSolved(BaseCallback):
    """Every EVAL_EVERY_STEPS environment steps, evaluate deterministically; stop once solved.

    SB3's own EvalCallback cannot report how long its evaluations took, which the
    protocol subtracts from the training time.
    """

    def __init__(self, eval_env: VecEnv) -> None:
        super().__init__(verbose=0)
        self.eval_env = eval_env
        self.next_evaluation_step = EVAL_EVERY_STEPS
        self.evaluation_seconds = 0.0
        self.solved = False

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_evaluation_step:
            return True
        self.next_evaluation_step += EVAL_EVERY_STEPS
        start = time.perf_counter()
        mean_return, _ = evaluate_policy(
            self.model, self.eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True
        )
        self.evaluation_seconds += time.perf_counter() - start
        self.solved = is_solved(mean_return)
        return not self.solved


def run_sb3(seed: int) -> RunResult:
    """Stable-Baselines3 PPO with rl-zoo's tuned CartPole-v1 hyperparameters.

    Learning rate and clip range anneal linearly to zero over the step cap, as
    rl-zoo's ``lin_`` schedules do over their budget and as textrl does over its own.
    """
    model = SB3PPO(
        "MlpPolicy",
        make_vec_env(ENV_ID, n_envs=8, seed=seed),
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=LinearSchedule(start=1e-3, end=0.0, end_fraction=1.0),
        clip_range=LinearSchedule(start=0.2, end=0.0, end_fraction=1.0),
        seed=seed,
        device="cpu",
        verbose=0,
    )
    # One parallel copy per evaluation episode, as textrl and Tianshou evaluate.
    eval_env = make_vec_env(ENV_ID, n_envs=EVAL_EPISODES, seed=seed + EVAL_SEED_OFFSET)
    callback = EvaluateAndStopWhenSolved(eval_env)
    start = time.perf_counter()
    model.learn(total_timesteps=STEP_CAP, callback=callback)
    total_seconds = time.perf_counter() - start
    return run_result(
        "sb3",
        seed,
        reached_solved_return=callback.solved,
        env_steps=model.num_timesteps,
        total_seconds=total_seconds,
        evaluation_seconds=callback.evaluation_seconds,
    )


class TimedCollector(Collector[CollectStats]):
    """Tianshou's ``Collector`` that also accumulates ``collect_time``.

    In Tianshou 2.0.1 only ``AsyncCollector`` adds to it, so the trainer's
    ``test_time`` reads 0 with a plain ``Collector``; textrl's collector keeps it.
    """

    def _collect(
        self,
        n_step: int | None = None,
        n_episode: int | None = None,
        random: bool = False,
        render: float | None = None,
        gym_reset_kwargs: dict[str, Any] | None = None,
    ) -> CollectStats:
        start = time.perf_counter()
        stats = super()._collect(n_step, n_episode, random, render, gym_reset_kwargs)
        self.collect_time += time.perf_counter() - start
        return stats


def run_tianshou(seed: int) -> RunResult:
    """Stock Tianshou PPO in the configuration of Tianshou's ``test_ppo_discrete.py``.

    Network, hyperparameters, training environments, collection size, repetitions and
    batch size are the test's; evaluation cadence, episodes, threshold and step cap are
    the protocol's. The test's ``test_in_train`` is off: it would add evaluations
    between the every-10,000-steps checks the other systems get.
    """
    num_training_envs = 20
    np.random.seed(seed)
    torch.manual_seed(seed)
    env = gym.make(ENV_ID)
    space_info = SpaceInfo.from_env(env)
    training_envs = DummyVectorEnv([lambda: gym.make(ENV_ID) for _ in range(num_training_envs)])
    test_envs = DummyVectorEnv([lambda: gym.make(ENV_ID) for _ in range(EVAL_EPISODES)])
    training_envs.seed(seed)
    test_envs.seed(seed + EVAL_SEED_OFFSET)
    # Actor and critic share one torso, as in the test.
    net = Net(state_shape=space_info.observation_info.obs_shape, hidden_sizes=[64, 64])
    actor = DiscreteActor(preprocess_net=net, action_shape=space_info.action_info.action_shape)
    critic = DiscreteCritic(preprocess_net=net)
    for module in ActorCritic(actor, critic).modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.orthogonal_(module.weight)
            torch.nn.init.zeros_(module.bias)
    policy = DiscreteActorPolicy(
        actor=actor,
        dist_fn=torch.distributions.Categorical,
        action_space=env.action_space,
        deterministic_eval=True,
    )
    algorithm = TianshouPPO(
        policy=policy,
        critic=critic,
        optim=AdamOptimizerFactory(lr=3e-4),
        gamma=0.99,
        max_grad_norm=0.5,
        eps_clip=0.2,
        vf_coef=0.5,
        ent_coef=0.0,
        gae_lambda=0.95,
        return_scaling=False,
        dual_clip=None,
        value_clip=False,
        advantage_normalization=False,
        recompute_advantage=False,
    )
    trainer_params = OnPolicyTrainerParams(
        training_collector=Collector[CollectStats](
            algorithm, training_envs, VectorReplayBuffer(20_000, num_training_envs)
        ),
        test_collector=TimedCollector(algorithm, test_envs),
        max_epochs=STEP_CAP // EVAL_EVERY_STEPS,
        epoch_num_steps=EVAL_EVERY_STEPS,
        collection_step_num_env_steps=2000,
        update_step_num_repetitions=10,
        batch_size=64,
        test_step_num_episodes=EVAL_EPISODES,
        stop_fn=is_solved,
        test_in_training=False,
        show_progress=False,
        verbose=False,
    )
    return run_tianshou_trainer("tianshou", seed, algorithm, trainer_params)


RUNNERS: dict[str, Callable[[int], RunResult]] = {
    "textrl": run_textrl,
    "sb3": run_sb3,
    "tianshou": run_tianshou,
}


def run_in_child(system: str, seed: int) -> RunResult:
    """Run one (system, seed) in a fresh single-threaded Python process and parse its report."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--run-one", system, "--seed", str(seed)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{system} seed {seed}: child process exited with status {completed.returncode}; "
            f"its stderr ends with:\n{completed.stderr[-2000:]}\n"
            f"Rerun it alone to debug: python {__file__} --run-one {system} --seed {seed}"
        )
    return RunResult(**json.loads(completed.stdout.strip().splitlines()[-1]))


@dataclass(frozen=True)
class SystemSummary:
    """One system's results over all seeds; statistics over solved seeds only, None if none."""

    system: str
    solved: int
    seeds: int
    median_seconds: float | None
    min_seconds: float | None
    max_seconds: float | None
    median_steps: float | None
    min_steps: int | None
    max_steps: int | None
    median_total_seconds: float | None


def summarize(system: str, results: list[RunResult]) -> SystemSummary:
    """Aggregate ``system``'s runs among ``results``."""
    runs = [result for result in results if result.system == system]
    solved = [run for run in runs if run.solved]
    seconds = [run.train_seconds for run in solved]
    steps = [run.env_steps for run in solved]
    return SystemSummary(
        system=system,
        solved=len(solved),
        seeds=len(runs),
        median_seconds=statistics.median(seconds) if solved else None,
        min_seconds=min(seconds) if solved else None,
        max_seconds=max(seconds) if solved else None,
        median_steps=statistics.median(steps) if solved else None,
        min_steps=min(steps) if solved else None,
        max_steps=max(steps) if solved else None,
        median_total_seconds=statistics.median(run.total_seconds for run in solved)
        if solved
        else None,
    )


def format_number(value: float | None, precision: int) -> str:
    """``value`` with thousands separators and ``precision`` decimals, or n/a."""
    return "n/a" if value is None else f"{value:,.{precision}f}"


def markdown_report(summaries: list[SystemSummary]) -> str:
    """The results table, textrl's speed relative to each peer, and how to read the seconds."""
    lines = [
        "| system | solved | median s | min s | max s | median steps | min steps | max steps "
        "| median total s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for summary in summaries:
        cells = [
            summary.system,
            f"{summary.solved}/{summary.seeds}",
            format_number(summary.median_seconds, 1),
            format_number(summary.min_seconds, 1),
            format_number(summary.max_seconds, 1),
            format_number(summary.median_steps, 0),
            format_number(summary.min_steps, 0),
            format_number(summary.max_steps, 0),
            format_number(summary.median_total_seconds, 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    by_system = {summary.system: summary for summary in summaries}
    if "textrl" in by_system:
        lines.append("")
        textrl_seconds = by_system["textrl"].median_seconds
        for peer in (summary for summary in summaries if summary.system != "textrl"):
            ratio = (
                None
                if textrl_seconds is None or peer.median_seconds is None
                else textrl_seconds / peer.median_seconds
            )
            lines.append(f"textrl/{peer.system} = {format_number(ratio, 2)}x (median seconds)")
    lines += [
        "",
        f"Seconds are wall-clock training time to a deterministic {EVAL_EPISODES}-episode "
        f"evaluation mean >= {SOLVED_RETURN:g} (checked every {EVAL_EVERY_STEPS:,} steps, cap "
        f"{STEP_CAP:,} steps), excluding evaluation time; total seconds include it. "
        "Statistics are over solved seeds only.",
    ]
    return "\n".join(lines)


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers never see a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def parse_systems(value: str) -> list[str]:
    """The comma-separated system names, validated."""
    systems = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in systems if name not in SYSTEMS]
    if unknown or not systems:
        raise argparse.ArgumentTypeError(
            f"unknown or missing system(s) {unknown or value!r}; choose from {', '.join(SYSTEMS)}"
        )
    return systems


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1) per system")
    parser.add_argument(
        "--systems", type=parse_systems, default=list(SYSTEMS), help="comma-separated subset"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per system")
    parser.add_argument("--output", type=Path, help="also write the Markdown report here")
    parser.add_argument("--run-one", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Run every (seed, system) in its own process, seeds interleaved, and report."""
    if args.run_one is not None:
        torch.set_num_threads(1)
        print(json.dumps(dataclasses.asdict(RUNNERS[args.run_one](args.seed))))
        return
    runs = [(seed, system) for seed in range(args.seeds) for system in args.systems]
    results = []
    progress = tqdm(runs, desc="CartPole-v1 runs", file=sys.stderr)
    for seed, system in progress:
        progress.set_postfix_str(f"{system} seed {seed}")
        results.append(run_in_child(system, seed))
    summaries = [summarize(system, results) for system in args.systems]
    report = markdown_report(summaries)
    if args.output is not None:
        write_atomically(args.output, report + "\n")
    if args.json:
        for summary in summaries:
            print(json.dumps(dataclasses.asdict(summary)))
    else:
        print(report)


if __name__ == "__main__":
    main(parse_args())
