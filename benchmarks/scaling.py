"""Throughput of the LM stages at 1 and N processes (DDP over gloo on CPU, one thread each).

Weak scaling: every process keeps the same per-rank batch, so N processes train on
an N-times larger global batch per step; perfect scaling is N times the throughput.
Each stage runs the library's own entry point on a tiny Llama and a character
tokenizer built here (nothing is downloaded):

- sft: ``train_sft`` (packed sequences, DDP), trained tokens per second.
- sft-fsdp: the same with ``fsdp=True`` (FSDP2, one unit per decoder layer).
- rm: ``train_reward_model`` (DDP), preference pairs per second.
- ppo: ``agents.PPO`` with ``reduce_sum=all_reduce_sum`` over ``TextCollector`` rollouts
  (every rank generates its own), episodes per second, generation included.
- rs: ``agents.RejectionSampling`` (best of 4, ``reduce_sum=all_reduce_sum``), each rank
  sampling its shard of the prompts, episodes per second, generation included.

Communication share: after the stage, the same process group times a bare all-reduce
of the model's parameter count (what DDP sends per step) and multiplies by the steps
taken; the share is that over the stage's wall time. It bounds the exposed cost from
above (DDP overlaps its buckets with the backward pass). For sft-fsdp it is a proxy:
FSDP all-gathers the weights in forward and backward and reduce-scatters the gradients,
about 1.5 times the bytes of one all-reduce, in one collective per layer.
Step-time overhead: the share of the N-process step time that the 1-process step
does not need, ``1 - throughput_N / (N * throughput_1)`` (weak scaling: the same work
per rank). It is measured, not modelled, and counts waits and latency too: for FSDP's
many small per-layer collectives over gloo it is the honest column, the proxy above
undercounts them.

    OMP_NUM_THREADS=1 python benchmarks/scaling.py --processes 1 2 [--steps 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pickle
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tianshou.algorithm.optim import AdamOptimizerFactory

from agents.lm_policy import LMActorCriticPolicy
from agents.ppo import PPO
from agents.rejection_sampling import RejectionSampling
from agents.text_collector import TextCollector
from envs.text_generation import TextGenerationVectorEnv
from textrl import distributed
from textrl.models import tiny_llama
from textrl.reward_model import RewardModelConfig, train_reward_model
from textrl.sft import SFTConfig, train_sft
from textrl.tokenization import build_char_tokenizer
from textrl.world.preferences import PreferencePair, write_preferences

STAGES = ("sft", "sft-fsdp", "rm", "ppo", "rs")
PROMPTS = ["abc", "hh", "de", "fgh", "a", "bb", "gg ab", "cab"]
ANSWERS = ["cba", "h", "ed", "hgf", "aaaa", "b", "ba gg", "bac"]
RATINGS = ["significantly better", "better", "slightly better", "negligibly better/unsure"]


@dataclass(frozen=True)
class Workload:
    """Sizes of one measurement (per rank where it says so)."""

    directory: Path
    hidden_size: int
    layers: int
    batch_size: int
    """Sequences (SFT), pairs (RM) or episodes (PPO) per rank and step."""
    steps: int
    """Optimizer steps (SFT, RM) or PPO iterations per measurement."""


@dataclass(frozen=True)
class Measurement:
    stage: str
    processes: int
    throughput: float
    unit: str
    communication_share: float


def prepare(workload: Workload, max_processes: int) -> None:
    """The tiny model and the SFT/RM data (enough rows for ``steps`` at the most ranks)."""
    tokenizer = build_char_tokenizer("abcdefgh ")
    model = tiny_llama(tokenizer, workload.hidden_size, workload.layers, num_heads=2, seed=0)
    model.save_pretrained(workload.directory / "model")
    tokenizer.save_pretrained(workload.directory / "model")
    rows = workload.batch_size * workload.steps * max_processes
    with (workload.directory / "sft.jsonl").open("w") as handle:
        for i in range(rows):
            record = {"prompt": PROMPTS[i % len(PROMPTS)], "answer": ANSWERS[i % len(ANSWERS)]}
            handle.write(json.dumps(record) + "\n")
    pairs = [
        PreferencePair(
            prompt=PROMPTS[i % len(PROMPTS)],
            chosen=ANSWERS[i % len(ANSWERS)],
            rejected=ANSWERS[(3 * i + 1) % len(ANSWERS)],
            rating=RATINGS[i % len(RATINGS)],
            category="helpfulness",
            is_safety=False,
            chosen_model="a",
            rejected_model="b",
        )
        for i in range(rows)
    ]
    write_preferences(workload.directory / "pairs.jsonl", pairs)


def run_sft(workload: Workload, output: Path, fsdp: bool = False) -> tuple[float, int]:
    result = train_sft(
        SFTConfig(
            model=str(workload.directory / "model"),
            data=workload.directory / "sft.jsonl",
            output_dir=output,
            epochs=1,
            learning_rate=1e-3,
            batch_size=workload.batch_size,
            sequence_length=16,
            save_every_steps=10**9,
            fsdp=fsdp,
        )
    )
    return result.tokens_per_second, result.steps


def run_rm(workload: Workload, output: Path) -> tuple[float, int]:
    result = train_reward_model(
        RewardModelConfig(
            policy=str(workload.directory / "model"),
            train=workload.directory / "pairs.jsonl",
            output_dir=output,
            learning_rate=1e-3,
            batch_size=workload.batch_size,
        )
    )
    return result.pairs_per_second, len(result.losses)


def text_env_and_policy(
    workload: Workload, samples_per_prompt: int = 1
) -> tuple[TextGenerationVectorEnv, LMActorCriticPolicy]:
    """``batch_size`` rows of this rank's shard of the prompts, and the tiny-Llama policy."""
    tokenizer = build_char_tokenizer("abcdefgh ")
    env = TextGenerationVectorEnv(
        workload.batch_size,
        tokenizer=tokenizer,
        prompts=PROMPTS[distributed.rank() :: distributed.world_size()],
        reward_fn=lambda prompts, responses: [float(len(r)) for r in responses],
        max_new_tokens=8,
        max_prompt_tokens=8,
        samples_per_prompt=samples_per_prompt,
    )
    model = tiny_llama(tokenizer, workload.hidden_size, workload.layers, num_heads=2, seed=0)
    policy = LMActorCriticPolicy(
        model=model,
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=8,
    )
    torch.manual_seed(distributed.rank_seed(0))
    return env, policy


def run_ppo(workload: Workload, output: Path) -> tuple[float, int]:
    env, policy = text_env_and_policy(workload)
    algorithm = PPO(
        policy=policy,
        optim=AdamOptimizerFactory(lr=1e-4),
        gamma=1.0,
        whiten_rewards=True,
        reduce_sum=distributed.all_reduce_sum,
    )
    return run_rounds(workload, algorithm, env)


def run_rs(workload: Workload, output: Path) -> tuple[float, int]:
    """Rounds of best-of-4 rejection sampling: each rank samples its prompts' shard."""
    env, policy = text_env_and_policy(workload, samples_per_prompt=4)
    algorithm = RejectionSampling(
        policy=policy,
        optim=AdamOptimizerFactory(lr=1e-4),
        samples_per_start=4,
        reduce_sum=distributed.all_reduce_sum,
    )
    return run_rounds(workload, algorithm, env)


def run_rounds(
    workload: Workload, algorithm: PPO | RejectionSampling, env: TextGenerationVectorEnv
) -> tuple[float, int]:
    """``steps`` rounds of collecting ``batch_size`` episodes per rank and one update;
    returns episodes per second over all ranks."""
    collector = TextCollector(algorithm, env, seed=distributed.rank())
    policy = algorithm.policy
    start = time.perf_counter()
    for _ in range(workload.steps):
        collector.reset_buffer()
        with policy_within_training_step(policy):
            collector.collect(n_episode=workload.batch_size)
            algorithm.update(collector.buffer, batch_size=None, repeat=1)
    elapsed = time.perf_counter() - start
    return distributed.world_size() * workload.batch_size * workload.steps / elapsed, workload.steps


RUNNERS = {
    "sft": (run_sft, "tokens/s"),
    "sft-fsdp": (functools.partial(run_sft, fsdp=True), "tokens/s"),
    "rm": (run_rm, "pairs/s"),
    "ppo": (run_ppo, "episodes/s"),
    "rs": (run_rs, "episodes/s"),
}


def allreduce_seconds(parameters: int, repeats: int = 20) -> float:
    """Mean wall time of one all-reduce of ``parameters`` float32 values (0 when alone)."""
    if not dist.is_initialized():
        return 0.0
    payload = torch.zeros(parameters)
    dist.all_reduce(payload)  # warm-up: connections
    distributed.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(payload)
    return (time.perf_counter() - start) / repeats


def _worker(rank: int, world: int, port: int, stage: str, workload: Workload, out: Path) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    distributed.setup("cpu")
    runner, unit = RUNNERS[stage]
    start = time.perf_counter()
    throughput, steps = runner(workload, out / f"{stage}-{world}")
    elapsed = time.perf_counter() - start
    model = tiny_llama(build_char_tokenizer("abcdefgh "), workload.hidden_size, workload.layers, 2)
    parameters = sum(p.numel() for p in model.parameters())
    share = steps * allreduce_seconds(parameters) / elapsed
    if rank == 0:
        (out / "measurement.pkl").write_bytes(
            pickle.dumps(Measurement(stage, world, throughput, unit, share))
        )
    distributed.shutdown()


def measure(stage: str, processes: int, workload: Workload, scratch: Path) -> Measurement:
    """One run in a fresh directory (a directory with a final checkpoint would resume and
    train nothing)."""
    out = Path(tempfile.mkdtemp(dir=scratch, prefix=f"{stage}-{processes}-"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_worker, args=(processes, port, stage, workload, out), nprocs=processes)
    return pickle.loads((out / "measurement.pkl").read_bytes())


def table(measurements: list[Measurement]) -> str:
    single = {m.stage: m.throughput for m in measurements if m.processes == 1}
    lines = [
        "| stage | processes | throughput | speed-up | communication share | step-time overhead |",
        "|---|---|---|---|---|---|",
    ]
    for m in measurements:
        speedup, overhead = "n/a", "n/a"
        if m.stage in single:
            speedup = f"{m.throughput / single[m.stage]:.2f}x"
            # weak scaling: a step's work per rank is the same at every N, so whatever share of
            # the N-process step time the 1-process step does not need is communication + waits
            overhead = f"{100 * (1 - m.throughput / (m.processes * single[m.stage])):.1f}%"
        lines.append(
            f"| {m.stage} | {m.processes} | {m.throughput:.1f} {m.unit} | {speedup} | "
            f"{100 * m.communication_share:.1f}% | {overhead} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> list[Measurement]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as scratch:
        workload = Workload(
            Path(scratch), args.hidden_size, args.layers, args.batch_size, args.steps
        )
        prepare(workload, max(args.processes))
        rounds = [
            [
                measure(stage, processes, workload, Path(scratch))
                for stage in args.stages
                for processes in args.processes
            ]
            for _ in range(args.repeats)
        ]
    measurements = [median_of(repeated) for repeated in zip(*rounds, strict=True)]
    print(table(measurements))
    return measurements


def median_of(repeated: tuple[Measurement, ...]) -> Measurement:
    """The repeat with the median throughput (one run's numbers, never a mix of runs)."""
    ordered = sorted(repeated, key=lambda m: m.throughput)
    return ordered[len(ordered) // 2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank and step")
    parser.add_argument("--steps", type=int, default=8, help="steps (PPO: iterations)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="rounds over every (stage, processes); medians"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
