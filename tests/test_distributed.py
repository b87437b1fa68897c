"""Distributed equivalence on CPU (gloo, 2 processes): N ranks at per-rank batch B take the
same steps as one process at batch N*B.

Workers are started with ``torch.multiprocessing.spawn`` and join through the same
``env://`` variables torchrun sets, so ``textrl.distributed.setup`` runs as in a launch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import io
import json
import os
import pickle
import runpy
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tianshou.algorithm.optim import AdamOptimizerFactory, TorchOptimizerFactory
from torch.distributed.tensor import DTensor

from agents import PPO
from agents.lm_policy import LMActorCriticPolicy
from agents.ppo import PPORollout
from agents.rejection_sampling import RejectionSampling, concatenate_rows
from agents.segments import segments_from_buffer
from agents.text_collector import TextCollector
from envs.text_generation import TextGenerationVectorEnv
from tests.test_pipeline import TOY_CONFIG
from tests.test_rlhf_ppo import a_count_reward, tiny_config
from tests.text_fixtures import (
    PROMPTS,
    TOKENIZER,
    assert_identical_weights,
    length_reward,
    text_env_and_policy,
    tiny_model,
)
from textrl import cli, distributed
from textrl.generation import generate_responses
from textrl.kl import AdaptiveKLController
from textrl.masked import masked_whiten
from textrl.models import load_causal_lm, tiny_llama
from textrl.pipeline.runner import LEDGER_FILE
from textrl.reward_model import RewardModelConfig, load_reward_model, train_reward_model
from textrl.rlhf_ppo import train_rlhf_ppo
from textrl.sampling import SamplingConfig
from textrl.sft import STATE_FILE, SFTConfig, checkpoints, train_sft
from textrl.tokenization import build_char_tokenizer
from textrl.world.preferences import PreferencePair, write_preferences

WORLD_SIZE = 2
LAUNCH_TIMEOUT_S = 120.0
"""Longer than any job here takes; a rank blocked in a collective its peer never joins
(a hang) fails the test instead of waiting for gloo's 30-minute timeout."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, port: int, job: Callable[[], object], output: Path) -> None:
    """One launched rank: torchrun's environment, one thread, ``job``'s result pickled."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD_SIZE),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    try:
        result = job()
    finally:
        distributed.shutdown()
    (output / f"rank{rank}.pkl").write_bytes(pickle.dumps(result))


def launch(job: Callable[[], object], output: Path) -> list[object]:
    """Run ``job`` on ``WORLD_SIZE`` ranks; each rank's return value, in rank order. Ranks
    still running after ``LAUNCH_TIMEOUT_S`` are killed and the test fails."""
    output.mkdir(parents=True, exist_ok=True)
    ranks = mp.spawn(_worker, args=(free_port(), job, output), nprocs=WORLD_SIZE, join=False)
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not ranks.join(timeout=max(deadline - time.monotonic(), 0.0)):
        if time.monotonic() >= deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail(f"the ranks still ran after {LAUNCH_TIMEOUT_S:.0f} s: a collective hung")
    return [pickle.loads((output / f"rank{r}.pkl").read_bytes()) for r in range(WORLD_SIZE)]


def assert_same_weights(left: Path, right: Path) -> None:
    """Equal up to float rounding: AdamW at lr 1e-2 turns last-bit gradient differences into
    ~1e-5 weight differences, while a wrongly weighted gradient moves weights by ~lr."""
    left_weights, right_weights = load_file(left), load_file(right)
    assert left_weights.keys() == right_weights.keys()
    for name, weights in left_weights.items():
        torch.testing.assert_close(weights, right_weights[name], rtol=1e-4, atol=5e-5, msg=name)


def assert_same_losses(two_ranks: list[float], one_process: list[float]) -> None:
    """Equal up to float rounding, for the reason of ``assert_same_weights``: the losses after
    a few AdamW steps at lr 1e-2 inherit its ~1e-5 relative weight differences (1.3e-5 seen on
    an AVX-512 CPU, under 1e-5 on another), while a rank that steps on its own half of the
    batch takes a different step from the first update on."""
    torch.testing.assert_close(
        torch.tensor(two_ranks), torch.tensor(one_process), rtol=1e-4, atol=0
    )


@pytest.fixture
def base_model(tmp_path) -> Path:
    directory = tmp_path / "base"
    tiny_model().save_pretrained(directory)
    TOKENIZER.save_pretrained(directory)
    return directory


@dataclasses.dataclass(frozen=True)
class TrainSFT:
    """A picklable job: ``train_sft(config, stop_after_steps)``."""

    config: SFTConfig
    stop_after_steps: int | None = None

    def __call__(self) -> list[float]:
        return train_sft(self.config, self.stop_after_steps).losses


@pytest.fixture
def demos(tmp_path) -> Path:
    data = tmp_path / "demos.jsonl"
    pairs = [("abc", "cba"), ("hh", "h"), ("de", "ed"), ("fgh", "hgf"), ("a", "aaaa"), ("bb", "b")]
    pairs = pairs * 4 + [("gg", "ab")]  # 13 packed rows: the last step's one row leaves rank 1 idle
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in pairs))
    return data


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_sft_on_two_ranks_takes_the_steps_of_one_process_at_twice_the_batch(
    base_model, demos, tmp_path, fsdp
):
    config = SFTConfig(
        model=str(base_model),
        data=demos,
        output_dir=tmp_path / "one",
        epochs=2,
        learning_rate=1e-2,
        batch_size=4,
        sequence_length=16,
        save_every_steps=100,
    )
    single = train_sft(config)
    per_rank = dataclasses.replace(  # 2 ranks x 2 micro-batches of 1 row = 4 rows per step
        config, output_dir=tmp_path / "two", batch_size=1, gradient_accumulation=2, fsdp=fsdp
    )
    losses = launch(TrainSFT(per_rank), tmp_path / "results")
    assert losses[0] == losses[1]  # the logged loss is the global one on every rank
    assert_same_losses(losses[0], single.losses)
    written = checkpoints(per_rank.output_dir)
    assert [p.name for p in written] == [single.checkpoint.name]  # one rank wrote it, once
    assert_same_weights(single.checkpoint / "model.safetensors", written[0] / "model.safetensors")
    model, _ = load_causal_lm(written[0])  # a plain checkpoint: it loads whole in one process
    loaded = model.state_dict()
    for name, weights in load_file(written[0] / "model.safetensors").items():
        assert torch.equal(loaded[name], weights), name


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_sft_on_two_ranks_stopped_and_resumed_ends_at_the_uninterrupted_weights(
    base_model, demos, tmp_path, fsdp
):
    """The checkpoint gathers the (sharded) weights and AdamW state to rank 0; a resumed run
    shards them again and continues each rank's data and random streams where they were."""
    config = SFTConfig(
        model=str(base_model),
        data=demos,
        output_dir=tmp_path / "straight",
        epochs=2,
        learning_rate=1e-2,
        batch_size=1,
        gradient_accumulation=2,
        sequence_length=16,
        save_every_steps=2,
        fsdp=fsdp,
    )
    straight_losses, _ = launch(TrainSFT(config), tmp_path / "results")
    interrupted = dataclasses.replace(config, output_dir=tmp_path / "interrupted")
    launch(TrainSFT(interrupted, stop_after_steps=3), tmp_path / "results")
    assert checkpoints(interrupted.output_dir)[-1].name == "checkpoint-000003"
    resumed_losses, _ = launch(TrainSFT(interrupted), tmp_path / "results")
    assert resumed_losses == straight_losses[3:]  # it ran only the steps after the checkpoint
    straight, resumed = checkpoints(config.output_dir)[-1], checkpoints(interrupted.output_dir)[-1]
    assert straight.name == resumed.name
    assert_identical_weights(straight, resumed)


@dataclasses.dataclass(frozen=True)
class TrainRewardModel:
    """A picklable job: ``train_reward_model(config, stop_after_steps)``."""

    config: RewardModelConfig
    stop_after_steps: int | None = None

    def __call__(self) -> list[float]:
        return train_reward_model(self.config, self.stop_after_steps).losses


@pytest.fixture
def preferences(tmp_path) -> Path:
    ratings = ["significantly better", "better", "slightly better", "negligibly better/unsure"]
    responses = ["cba", "h", "ed", "hgf", "aaaa", "b", "gg", "abcd", "e"]
    pairs = [
        PreferencePair(
            prompt=prompt,
            chosen=responses[i % len(responses)],
            rejected=responses[(3 * i + 1) % len(responses)],
            rating=ratings[i % len(ratings)],
            category="helpfulness",
            is_safety=False,
            chosen_model="a",
            rejected_model="b",
        )
        for i, prompt in enumerate(["abc", "hh", "de", "fgh", "a", "bb"] * 3)
    ]  # 18 pairs at 8 per step: the last step's 2 pairs are one per rank
    write_preferences(tmp_path / "pairs.jsonl", pairs)
    return tmp_path / "pairs.jsonl"


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_reward_model_on_two_ranks_takes_the_steps_of_one_process_at_twice_the_batch(
    base_model, preferences, tmp_path, fsdp
):
    config = RewardModelConfig(
        policy=str(base_model),
        train=preferences,
        output_dir=tmp_path / "one",
        epochs=2,
        learning_rate=1e-2,
        batch_size=8,
    )
    single = train_reward_model(config)
    per_rank = dataclasses.replace(config, output_dir=tmp_path / "two", batch_size=4, fsdp=fsdp)
    losses = launch(TrainRewardModel(per_rank), tmp_path / "results")
    assert losses[0] == losses[1]
    assert_same_losses(losses[0], single.losses)
    written = checkpoints(per_rank.output_dir)
    assert [p.name for p in written] == [single.checkpoint.name]
    assert_same_weights(single.checkpoint / "model.safetensors", written[0] / "model.safetensors")


def test_fsdp_reward_model_on_two_ranks_stopped_and_resumed_ends_at_the_uninterrupted_weights(
    base_model, preferences, tmp_path
):
    config = RewardModelConfig(
        policy=str(base_model),
        train=preferences,
        output_dir=tmp_path / "straight",
        epochs=2,
        learning_rate=1e-2,
        batch_size=4,
        fsdp=True,
        save_every_steps=2,
    )
    straight_losses, _ = launch(TrainRewardModel(config), tmp_path / "results")
    interrupted = dataclasses.replace(config, output_dir=tmp_path / "interrupted")
    launch(TrainRewardModel(interrupted, stop_after_steps=3), tmp_path / "results")
    assert checkpoints(interrupted.output_dir)[-1].name == "checkpoint-000003"
    resumed_losses, _ = launch(TrainRewardModel(interrupted), tmp_path / "results")
    assert resumed_losses == straight_losses[3:]  # it ran only the steps after the checkpoint
    straight, resumed = checkpoints(config.output_dir)[-1], checkpoints(interrupted.output_dir)[-1]
    assert straight.name == resumed.name
    assert_identical_weights(straight, resumed)


class RolloutRecordingPPO(PPO):
    """PPO that keeps the rollout its update preprocessed and the reference log-probs it
    shaped the rewards with (the env's, or the policy's reference's), for the test."""

    rollout: PPORollout
    reference_log_probs: torch.Tensor

    def _preprocess_batch(self, batch, buffer, indices) -> PPORollout:
        self.rollout = super()._preprocess_batch(batch, buffer, indices)
        return self.rollout

    def _reference_log_probs(self, segments):
        self.reference_log_probs = super()._reference_log_probs(segments)
        return self.reference_log_probs


def new_controller() -> AdaptiveKLController:
    return AdaptiveKLController(value=0.1, target=0.5, horizon=20)


def ppo_on_rank() -> dict[str, object]:
    """Each rank collects its own 4 responses (its own sampling seed) and takes PPO steps
    with globally reduced statistics; returns what the parent checks."""
    distributed.setup("cpu")
    env, policy = text_env_and_policy(num_envs=4, max_new_tokens=6)
    torch.manual_seed(distributed.rank_seed(0))
    algorithm = RolloutRecordingPPO(
        policy=policy,
        optim=AdamOptimizerFactory(lr=1e-3),
        gamma=1.0,
        adaptive_kl=new_controller(),
        whiten_rewards=True,
        reduce_sum=distributed.all_reduce_sum,
    )
    collector = TextCollector(algorithm, env, seed=distributed.rank())
    with policy_within_training_step(policy):
        collector.collect(n_episode=4)
        stats = algorithm.update(collector.buffer, batch_size=2 * 6, repeat=2)
    return {
        **reduced_statistics(algorithm, stats),
        "parameters": torch.cat([p.detach().flatten() for p in policy.parameters()]),
    }


def reduced_statistics(algorithm: RolloutRecordingPPO, stats) -> dict[str, object]:
    """What the parent compares with the full batch: the rollout, its globally whitened
    rewards and advantages, the sequence KL and the controller's step."""
    rollout = algorithm.rollout
    mask = rollout.segments.mask
    return {
        "mask": mask,
        "rewards": rollout.segments.rewards,
        "log_probs": rollout.old_log_probs,
        "reference_log_probs": algorithm.reference_log_probs,
        "advantages": rollout.advantages,
        "sequence_kl": stats.sequence_kl,
        "kl_coef_after": algorithm.adaptive_kl.value,
        "gradient_steps": stats.gradient_steps,
        "whitened_rewards": masked_whiten(
            rollout.segments.rewards, mask, shift_mean=False, reduce_sum=distributed.all_reduce_sum
        ),
        "whitened_advantages": masked_whiten(
            rollout.advantages, mask, reduce_sum=distributed.all_reduce_sum
        ),
    }


def full_batch(results: list[dict[str, object]], key: str) -> torch.Tensor:
    """The ranks' ``(B_r, T_r)`` tensors as one ``(sum B_r, max T_r)`` batch, zero-padded."""
    width = max(r[key].shape[1] for r in results)
    return torch.cat(
        [torch.nn.functional.pad(r[key], (0, width - r[key].shape[1])) for r in results]
    )


def test_ppo_on_two_ranks_reduces_its_statistics_over_the_full_batch(tmp_path):
    results = launch(ppo_on_rank, tmp_path / "results")
    assert_reduced_over_the_full_batch(results)
    torch.testing.assert_close(results[0]["parameters"], results[1]["parameters"])


def assert_reduced_over_the_full_batch(results: list[dict[str, object]]) -> None:
    assert not torch.equal(results[0]["log_probs"], results[1]["log_probs"]), (
        "the ranks sampled the same responses; their seeds do not differ"
    )
    mask = full_batch(results, "mask")
    per_token_kl = full_batch(results, "log_probs") - full_batch(results, "reference_log_probs")
    full_sequence_kl = (per_token_kl * mask).sum(1).mean().item()
    controller = new_controller()
    controller.update(full_sequence_kl, num_sequences=mask.shape[0])
    for result in results:
        assert result["sequence_kl"] == pytest.approx(full_sequence_kl, rel=1e-5)
        assert result["kl_coef_after"] == pytest.approx(controller.value, rel=1e-6)
    for key, source, options in [
        ("whitened_rewards", "rewards", {"shift_mean": False}),
        ("whitened_advantages", "advantages", {}),
    ]:
        expected = masked_whiten(full_batch(results, source), mask, **options)
        torch.testing.assert_close(full_batch(results, key), expected, rtol=1e-5, atol=1e-6)
    assert results[0]["gradient_steps"] == results[1]["gradient_steps"] > 0


def full_parameters(module: torch.nn.Module) -> torch.Tensor:
    """All of ``module``'s parameters, flat; FSDP's shards gathered (every rank calls it)."""
    return torch.cat(
        [
            (p.full_tensor() if isinstance(p, DTensor) else p).detach().flatten()
            for p in module.parameters()
        ]
    )


def fsdp_ppo_on_rank() -> dict[str, object]:
    """``ppo_on_rank`` with the policy LM and its reference (scored by the policy, as in
    ``textrl ppo --fsdp``) sharded by FSDP and collected in lockstep, and beside it an
    unsharded twin that takes the update of DDP-style PPO on the same rollout."""
    distributed.setup("cpu")
    env, _ = text_env_and_policy(num_envs=4, max_new_tokens=6, reference_seed=None)
    algorithms = {}
    for sharded in (True, False):
        model, reference = tiny_model(), tiny_model(seed=1)
        if sharded:
            distributed.shard_per_layer(model)
            distributed.shard_per_layer(reference)
        policy = LMActorCriticPolicy(
            model=model,
            observation_space=env.single_observation_space,
            action_space=env.single_action_space,
            max_prompt_tokens=8,
            reference_model=reference,
        )
        algorithms[sharded] = RolloutRecordingPPO(
            policy=policy,
            optim=AdamOptimizerFactory(lr=1e-3),
            gamma=1.0,
            adaptive_kl=new_controller(),
            whiten_rewards=True,
            max_grad_norm=0.1,  # clips: the global norm spans shards and the value head
            reduce_sum=distributed.all_reduce_sum,
        )
    torch.manual_seed(distributed.rank_seed(0))
    collector = TextCollector(algorithms[True], env, seed=distributed.rank(), synced=True)
    with policy_within_training_step(algorithms[True].policy):
        collector.collect(n_episode=4)
    statistics = {}
    for sharded, algorithm in algorithms.items():
        torch.manual_seed(1)  # the same minibatch order
        with policy_within_training_step(algorithm.policy):
            statistics[sharded] = algorithm.update(collector.buffer, batch_size=2 * 6, repeat=2)
    return {
        **reduced_statistics(algorithms[True], statistics[True]),
        "parameters": full_parameters(algorithms[True].policy),
        "unsharded_parameters": full_parameters(algorithms[False].policy),
    }


def test_fsdp_ppo_on_two_ranks_reduces_its_statistics_and_steps_as_ddp_does(tmp_path):
    results = launch(fsdp_ppo_on_rank, tmp_path / "results")
    assert_reduced_over_the_full_batch(results)
    for result in results:
        torch.testing.assert_close(
            result["parameters"], result["unsharded_parameters"], rtol=1e-4, atol=1e-6
        )
    assert not torch.equal(results[0]["parameters"], full_parameters(text_env_and_policy()[1]))


def synced_decoding_on_rank() -> dict[str, object]:
    """Each rank decodes its own prompts with an FSDP-sharded tiny model in lockstep, and
    again alone with an unsharded copy: the sequences the parent compares. Rank 0 samples
    3 new tokens per episode and rank 1 8, so rank 0's rows end first and it idles."""
    distributed.setup("cpu")
    rank = distributed.rank()
    prompts, limit = [(PROMPTS[:2], 3), (PROMPTS[2:], 8)][rank]
    sampling = SamplingConfig(temperature=2.0)  # near uniform: EOS comes early for some rows
    sharded, alone = distributed.shard_per_layer(tiny_model()), tiny_model()
    forwards = []
    alone.register_forward_hook(lambda *_: forwards.append(1))
    result: dict[str, object] = {}
    for name, model, synced in [("synced", sharded, True), ("alone", alone, False)]:
        torch.manual_seed(SAMPLING_SEEDS[rank])
        result[f"{name}_responses"] = generate_responses(
            model, TOKENIZER, prompts, sampling, max_new_tokens=8, synced=synced
        )
        result["forwards_alone"] = len(forwards)
        env = TextGenerationVectorEnv(
            4,
            tokenizer=TOKENIZER,
            prompts=prompts,
            reward_fn=length_reward,
            max_new_tokens=limit,
            max_prompt_tokens=8,
        )
        policy = LMActorCriticPolicy(
            model=model,
            observation_space=env.single_observation_space,
            action_space=env.single_action_space,
            max_prompt_tokens=8,
            sampling=sampling,
        )
        collector = TextCollector(policy, env, seed=rank, synced=synced)
        torch.manual_seed(SAMPLING_SEEDS[rank])
        with policy_within_training_step(policy):
            collector.collect(n_episode=8)  # two rounds
        episodes = collector.buffer.token_segments("cpu")
        result[f"{name}_episodes"] = (episodes.response_ids, episodes.mask, episodes.rewards)
    return result


SAMPLING_SEEDS = (9, 0)
"""Seeds under which, alone, rank 0's responses end a few steps before rank 1's."""


def test_lockstep_decoding_with_a_sharded_model_gives_each_rank_its_unsynced_sequences(
    tmp_path,
):
    results = launch(synced_decoding_on_rank, tmp_path / "results")
    forwards = [result["forwards_alone"] for result in results]
    assert forwards[0] < forwards[1], f"alone, the ranks would not stop apart: {forwards} forwards"
    for result in results:
        assert result["synced_responses"] == result["alone_responses"]
        for synced, alone in zip(result["synced_episodes"], result["alone_episodes"], strict=True):
            torch.testing.assert_close(synced, alone)


@dataclasses.dataclass(frozen=True)
class TrainPPO:
    """A picklable job: ``train_rlhf_ppo(config, stop_after_iterations)`` with the test
    reward; its checkpoint and how many responses this call scored (its rollouts)."""

    config: object
    stop_after_iterations: int | None = None

    def __call__(self) -> tuple[Path, int]:
        scored = []

        def reward(prompts: list[str], responses: list[str]) -> list[float]:
            scored.extend(responses)
            return a_count_reward(prompts, responses)

        result = train_rlhf_ppo(self.config, self.stop_after_iterations, reward=reward)
        return result.checkpoint, len(scored)


def test_fsdp_rlhf_ppo_on_two_ranks_writes_the_checkpoint_of_ddp(base_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    written = {}
    for fsdp in (False, True):
        config = tiny_config(
            base_model, prompts, tmp_path / f"fsdp{fsdp}", iterations=2, batch_size=8, fsdp=fsdp
        )
        (checkpoint, _), _ = launch(TrainPPO(config), tmp_path / f"results{fsdp}")
        written[fsdp] = checkpoint / "model.safetensors"
        load_causal_lm(checkpoint)  # a plain checkpoint: it loads whole in one process
    assert_same_weights(written[False], written[True])


def test_fsdp_rlhf_ppo_on_two_ranks_stopped_and_resumed_ends_at_the_uninterrupted_weights(
    base_model, tmp_path
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    config = tiny_config(
        base_model, prompts, tmp_path / "straight", iterations=3, batch_size=8, fsdp=True
    )
    (straight, scored_straight), _ = launch(TrainPPO(config), tmp_path / "results")
    interrupted = dataclasses.replace(config, output_dir=tmp_path / "interrupted")
    launch(TrainPPO(interrupted, stop_after_iterations=1), tmp_path / "results")
    (resumed, scored_resumed), _ = launch(TrainPPO(interrupted), tmp_path / "results")
    assert scored_resumed == scored_straight * 2 // 3  # it ran iterations 2 and 3 only
    assert straight.name == resumed.name
    assert_identical_weights(straight, resumed)


def test_micro_batches_are_as_many_on_every_rank(monkeypatch):
    """3 rows on 2 ranks at 1 row per micro-batch: rank 1's one row is padded with a
    zero-weight micro-batch, so both ranks run 2 forwards (FSDP's collectives pair up)."""
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    for rank, expected in [(0, [([0], 0.5), ([1], 0.5)]), (1, [([2], 0.5), ([2], 0.0)])]:
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        part = distributed.shard(torch.arange(3), global_count=4)
        batches = distributed.lockstep_micro_batches(part, size=1, global_rows=3)
        assert [(rows.tolist(), scale) for rows, scale in batches] == expected


class RecordingRejectionSampling(RejectionSampling):
    """Rejection sampling that keeps each sampled episode's return, for the test."""

    returns: torch.Tensor

    def _preprocess_batch(self, batch, buffer, indices):
        rows = segments_from_buffer(batch, buffer, indices, self._device)
        self.returns = (rows.rewards * rows.mask).sum(1).double()  # (B,)
        return super()._preprocess_batch(batch, buffer, indices)


SAMPLES_PER_PROMPT = 2
MIN_RETURN = 2.0


def new_rejection_sampling(env, model: torch.nn.Module) -> RecordingRejectionSampling:
    policy = LMActorCriticPolicy(
        model=model,
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=8,
    )
    return RecordingRejectionSampling(
        policy=policy,
        optim=TorchOptimizerFactory(torch.optim.SGD, lr=0.1),  # a wrong gradient scale shows
        samples_per_start=SAMPLES_PER_PROMPT,
        min_return=MIN_RETURN,
        max_grad_norm=100.0,  # measures a norm over shards and the value head, does not clip
        reduce_sum=distributed.all_reduce_sum,
    )


def rejection_sampling_on_rank(fsdp: bool) -> dict[str, object]:
    """Rank 0 samples 6 prompts (of 3 distinct ones), rank 1 six (of 1): as many episodes,
    as lockstep collection needs, and kept sets of different sizes, so rank 1's second
    minibatch is empty; one round of best-of-2 and fine-tuning with reduced statistics. With
    ``fsdp`` the policy LM is sharded and collects in lockstep, and an unsharded twin takes
    the update of the algorithm without FSDP on the same episodes. A third learner takes one
    step on all kept rows, which one process can repeat on the union of the kept sets."""
    distributed.setup("cpu")
    env = TextGenerationVectorEnv(
        4,
        tokenizer=TOKENIZER,
        prompts=PROMPTS[:3] if distributed.rank() == 0 else PROMPTS[3:],
        reward_fn=length_reward,
        max_new_tokens=6,
        max_prompt_tokens=8,
        samples_per_prompt=SAMPLES_PER_PROMPT,
    )
    torch.manual_seed(distributed.rank_seed(0))

    def learner_model() -> torch.nn.Module:
        return distributed.shard_per_layer(tiny_model()) if fsdp else tiny_model()

    algorithm = new_rejection_sampling(env, learner_model())
    collector = TextCollector(algorithm, env, seed=distributed.rank(), synced=fsdp)
    with policy_within_training_step(algorithm.policy):
        collector.collect(n_episode=12)
    result: dict[str, object] = {}
    for name, learner, batch_size, repeat in [
        ("", algorithm, 6, 2),
        ("unsharded_", new_rejection_sampling(env, tiny_model()), 6, 2),
        ("full_batch_", new_rejection_sampling(env, learner_model()), None, 1),
    ]:
        torch.manual_seed(1)  # the same minibatch order
        with policy_within_training_step(learner.policy):
            result[f"{name}stats"] = learner.update(collector.buffer, batch_size, repeat)
        result[f"{name}parameters"] = full_parameters(learner.policy.model)
    return {
        **result,
        "returns": algorithm.returns.reshape(-1, SAMPLES_PER_PROMPT),
        "kept_returns": [k.episode_return for k in algorithm.kept_episodes],
        "kept_rows": [k.episode for k in algorithm.kept_episodes],
    }


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp"])
def test_rejection_sampling_on_two_ranks_reduces_its_statistics_over_the_union(fsdp, tmp_path):
    results = launch(functools.partial(rejection_sampling_on_rank, fsdp), tmp_path / "results")
    kept_sizes = [len(r["kept_returns"]) for r in results]
    assert kept_sizes[0] != kept_sizes[1] and min(kept_sizes) > 0, kept_sizes
    returns = torch.cat([r["returns"] for r in results])  # (groups of both ranks, K)
    kept = [value for r in results for value in r["kept_returns"]]
    for result in results:
        stats = result["stats"]
        assert stats.sampled_mean_return == pytest.approx(returns.mean().item())
        assert stats.best_of_k_mean_return == pytest.approx(returns.max(1).values.mean().item())
        assert stats.rejected_count == int((returns.max(1).values < MIN_RETURN).sum())
        assert stats.kept_count == len(kept)
        assert stats.kept_mean_return == pytest.approx(sum(kept) / len(kept))
    assert results[0]["stats"].gradient_steps == results[1]["stats"].gradient_steps > 0
    assert results[0]["stats"].loss == results[1]["stats"].loss
    torch.testing.assert_close(results[0]["parameters"], results[1]["parameters"])
    alone = new_rejection_sampling(text_env_and_policy()[0], tiny_model())
    alone._fine_tuning_step(concatenate_rows([row for r in results for row in r["kept_rows"]]), 1.0)
    for result in results:  # sharded or not, the update of the unsharded algorithm
        assert result["stats"].loss == pytest.approx(result["unsharded_stats"].loss, rel=1e-5)
        torch.testing.assert_close(
            result["parameters"], result["unsharded_parameters"], rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(
            result["full_batch_parameters"],
            full_parameters(alone.policy.model),
            rtol=1e-4,
            atol=1e-6,
        )


@dataclasses.dataclass(frozen=True)
class RunCommand:
    """A picklable job: ``textrl <argv>``; its exit code, what it printed, and whether the
    rank was still in the process group when the command returned."""

    argv: list[str]

    def __call__(self) -> tuple[int, str, bool]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli.main(self.argv)
        return code, printed.getvalue(), torch.distributed.is_initialized()


@pytest.mark.parametrize("options", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_textrl_rs_runs_a_round_on_two_ranks_and_writes_the_union_of_their_kept_sets(
    options, tmp_path
):
    tokenizer = build_char_tokenizer()
    policy = tmp_path / "policy"
    tiny_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    reward_model, _ = load_reward_model(policy)
    reward_model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    config = tmp_path / "rs.toml"
    config.write_text(
        "[rejection_sampling]\nsamples_per_prompt = 2\nprompts_per_round = 4\n"
        "candidate_temperatures = [1.0]\ntemperature_prompts = 2\nminibatch_size = 64\n"
        "[evaluation]\nmax_new_tokens = 3\n"
    )
    argv = ["rs", "--policy", str(policy), "--out", str(tmp_path / "rs"), "--config", str(config)]
    argv += ["--helpfulness-rm", str(tmp_path / "rm"), "--safety-rm", str(tmp_path / "rm")]
    argv += options
    (code, printed, joined), (other_code, other_printed, other_joined) = launch(
        RunCommand(argv), tmp_path / "results"
    )
    assert code == other_code == 0 and other_printed == ""  # rank 0 alone reports
    assert not joined and not other_joined  # the command left the group it joined
    result = json.loads(printed.splitlines()[-1])
    kept = torch.load(result["kept"], weights_only=False)  # both ranks' kept episodes
    assert result["kept_count"] == len(kept) > 0
    assert result["kept_mean_reward"] == pytest.approx(
        sum(k.episode_return for k in kept) / len(kept)
    )
    load_causal_lm(result["checkpoint"])  # whole, in one process (gathered from shards)


def cartpole_runs(tmp_path: Path, modes: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """``examples/cartpole_ppo.py``'s result per ``--vector`` mode (timing left out)."""
    example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples/cartpole_ppo.py"))
    results = {}
    for vector in modes:
        flags = ["--vector", vector, "--total-steps", "512", "--num-envs", "2"]
        flags += ["--eval-episodes", "2", "--no-progress", "--seed", "1"]
        flags += [
            "--log-dir",
            str(tmp_path / vector),
            "--checkpoint",
            str(tmp_path / vector / "c.pt"),
        ]
        result = example["main"](example["parse_args"](flags))
        results[vector] = {k: v for k, v in result.items() if k != "seconds"}
    return results


def test_cartpole_with_one_process_per_env_copy_trains_exactly_as_in_process(tmp_path):
    results = cartpole_runs(tmp_path, ("sync", "subproc"))
    assert results["subproc"] == results["sync"]


def test_cartpole_with_one_ray_actor_per_env_copy_trains_exactly_as_in_process(tmp_path):
    ray = pytest.importorskip("ray")
    try:
        results = cartpole_runs(tmp_path, ("sync", "ray"))
    finally:
        ray.shutdown()  # the local Ray instance the env started
    assert results["ray"] == results["sync"]


SHORT_GROUP_TIMEOUT = datetime.timedelta(seconds=2)


def rank0_works_past_the_group_timeout() -> list[str | None]:
    """Rank 0 works alone for longer than the default group's timeout before
    ``from_main_process`` and before ``barrier``, as in a long rank-0 pipeline stage."""
    dist.init_process_group("gloo", init_method="env://", timeout=SHORT_GROUP_TIMEOUT)
    distributed.setup("cpu")
    main = distributed.is_main_process()
    rank0_work = 2.5 * SHORT_GROUP_TIMEOUT.total_seconds()
    time.sleep(rank0_work if main else 0.0)
    received = [distributed.from_main_process("rank 0's result" if main else None)]
    time.sleep(rank0_work if main else 0.0)
    distributed.barrier()
    received.append(distributed.from_main_process("after the barrier" if main else None))
    return received


def test_other_ranks_wait_for_rank_0_longer_than_the_default_group_timeout(tmp_path):
    """A rank-0 stage may outlast NCCL's 10-minute default: the waiting rank must not fail.
    (Over the default group, here of 2 s, the waiting rank raises a timeout.)"""
    expected = ["rank 0's result", "after the barrier"]
    assert launch(rank0_works_past_the_group_timeout, tmp_path) == [expected, expected]


@pytest.mark.parametrize("options", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_textrl_pipeline_runs_every_stage_on_two_ranks(options, tmp_path):
    """Under torchrun the training stages split their work over the ranks and the others run
    on rank 0; both ranks end with rank 0's summary and rank 0 writes one ledger."""
    config = tmp_path / "toy.toml"
    config.write_text(TOY_CONFIG.format(out=tmp_path / "run", device="cpu"))
    (code, printed, joined), (other_code, other_printed, other_joined) = launch(
        RunCommand(["pipeline", "--config", str(config), *options]), tmp_path / "results"
    )
    assert code == other_code == 0 and other_printed == ""  # rank 0 alone reports
    assert not joined and not other_joined
    summary = json.loads(printed.splitlines()[-1])
    assert [v["name"] for v in summary["versions"]] == ["SFT", "RLHF-V1", "RLHF-V2"]
    ledger = json.loads((tmp_path / "run" / LEDGER_FILE).read_text())
    assert "report" in ledger and "RLHF-V2 ppo" in ledger and "RLHF-V2 safety DPO" in ledger
    trained = [ledger["pretraining"]["result"]["checkpoint"], ledger["sft"]["result"]["checkpoint"]]
    for index in (1, 2):
        models = ledger[f"RLHF-V{index} reward models"]["result"]
        trained += [models["helpfulness"]["checkpoint"], models["safety"]["checkpoint"]]
    for checkpoint in trained:  # each trained on both ranks: one random stream per rank
        state = torch.load(Path(checkpoint) / STATE_FILE, weights_only=False)
        assert len(state["torch_rng_by_rank"]) == WORLD_SIZE, checkpoint
        assert state["config"]["fsdp"] == bool(options), checkpoint
