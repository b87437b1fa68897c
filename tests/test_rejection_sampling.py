"""agents.RejectionSampling: best-of-K selection, the kept set across rounds, learning on
CartPole and on text; K samples of a prompt share a group and one prefill."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.algorithm.algorithm_base import RandomActionPolicy, policy_within_training_step
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch

import envs  # noqa: F401  (registers the textrl/ ids)
from agents import (
    KeptEpisode,
    MLPActorCriticPolicy,
    RejectionSampling,
    SegmentBuffer,
    VectorEnvCollector,
    best_of_k,
    keep_best,
)
from agents.lm_policy import LMActorCriticPolicy
from agents.segments import segments_from_buffer
from agents.text_collector import TextCollector
from envs.shared_start import SharedStartVectorEnv, make_shared_start_vector_env
from envs.text_generation import TextGenerationVectorEnv
from tests.text_fixtures import PROMPTS, TOKENIZER, length_reward, tiny_model
from textrl.decoding import IncrementalDecoder
from textrl.models import tiny_llama

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole_rejection_sampling.py"


def test_best_of_k_takes_the_first_of_tied_maxima_and_rejects_below_the_threshold():
    returns = np.array([[1.0, 5.0, 3.0], [2.0, 2.0, 0.0], [-1.0, -3.0, -2.0]])
    assert best_of_k(returns).tolist() == [1, 0, 0]
    assert best_of_k(returns, min_return=0.0).tolist() == [1, 0, -1]
    assert best_of_k(returns, min_return=2.0).tolist() == [1, 0, -1]  # reaching it is enough
    assert best_of_k(returns, min_return=5.5).tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="groups, K"):
        best_of_k(np.zeros(3))


def kept(start: bytes, episode_return: float, round_: int) -> KeptEpisode:
    return KeptEpisode(start, episode_return, episode=None, round=round_)  # only returns count


def test_keep_best_replaces_only_with_a_strictly_better_episode():
    first = {b"a": kept(b"a", 5.0, 0), b"b": kept(b"b", 1.0, 0)}
    merged = keep_best(first, [kept(b"a", 4.0, 1), kept(b"b", 3.0, 1), kept(b"c", 0.0, 1)])
    assert {key: (k.episode_return, k.round) for key, k in merged.items()} == {
        b"a": (5.0, 0),
        b"b": (3.0, 1),
        b"c": (0.0, 1),
    }
    assert keep_best(first, [kept(b"a", 5.0, 1)])[b"a"].round == 0  # a tie keeps the earlier
    assert first[b"b"].episode_return == 1.0  # the input is not modified


def cartpole_policy(seed: int = 0) -> MLPActorCriticPolicy:
    torch.manual_seed(seed)
    env = gym.make("CartPole-v1")
    return MLPActorCriticPolicy(
        observation_space=env.observation_space, action_space=env.action_space
    )


def hand_made_round(starts: list[float], lengths: list[int]) -> SegmentBuffer:
    """One episode per row: constant observation ``starts[row]``, reward 1 per step (return =
    length), terminated on the last step."""
    rows, horizon = len(lengths), max(lengths)
    observations = np.repeat(np.asarray(starts, dtype=np.float32)[:, None, None], horizon, 1)
    observations = np.repeat(observations, 4, 2)  # (rows, T, 4)
    terminated = np.zeros((rows, horizon), dtype=bool)
    terminated[np.arange(rows), np.asarray(lengths) - 1] = True
    buffer = SegmentBuffer(1000)
    buffer.add_rows(
        Batch(
            obs=observations,
            act=np.zeros((rows, horizon), dtype=np.int64),
            rew=np.ones((rows, horizon), dtype=np.float32),
            terminated=terminated,
            truncated=np.zeros_like(terminated),
            obs_next=observations,
        ),
        np.asarray(lengths),
    )
    return buffer


def run_rounds(algorithm: RejectionSampling, rounds: list[SegmentBuffer]):
    with policy_within_training_step(algorithm.policy):
        return [algorithm.update(buffer, batch_size=None, repeat=1) for buffer in rounds]


@pytest.mark.parametrize("keep_all", [True, False])
def test_the_kept_set_keeps_the_best_episode_of_each_start_state_across_rounds(keep_all):
    algorithm = RejectionSampling(
        policy=cartpole_policy(),
        optim=AdamOptimizerFactory(lr=1e-3),
        samples_per_start=2,
        keep_best_of_all_rounds=keep_all,
    )
    # start states A (0.1) and B (0.2), two samples each; return = episode length
    stats = run_rounds(
        algorithm,
        [
            hand_made_round([0.1, 0.1, 0.2, 0.2], [3, 5, 1, 2]),
            hand_made_round([0.1, 0.1, 0.2, 0.2], [4, 1, 7, 6]),
        ],
    )
    kept_set = [(k.episode_return, k.round) for k in algorithm.kept_episodes]
    if keep_all:  # A's later, worse best (4) does not replace 5; B's better one (7) does
        assert kept_set == [(5.0, 0), (7.0, 1)]
        assert stats[1].newly_kept_count == 1 and stats[1].kept_mean_return == 6.0
    else:  # each round trains on its own bests
        assert kept_set == [(4.0, 1), (7.0, 1)]
    assert [s.sampled_mean_return for s in stats] == [2.75, 4.5]
    assert [s.best_of_k_mean_return for s in stats] == [3.5, 5.5]
    assert all(s.kept_count == 2 and s.gradient_steps == 1 for s in stats)
    episode = algorithm.kept_episodes[-1].episode
    assert episode.num_rows == 1 and episode.mask.sum() == 7


def test_a_new_algorithm_resumes_the_kept_set_of_earlier_rounds(tmp_path):
    first = RejectionSampling(
        policy=cartpole_policy(),
        optim=AdamOptimizerFactory(lr=1e-3),
        samples_per_start=2,
        keep_best_of_all_rounds=True,
    )
    run_rounds(first, [hand_made_round([0.1, 0.1, 0.2, 0.2], [3, 5, 1, 2])])
    torch.save(first.kept_episodes, tmp_path / "kept.pt")
    second = RejectionSampling(
        policy=cartpole_policy(seed=1),
        optim=AdamOptimizerFactory(lr=1e-3),
        samples_per_start=2,
        keep_best_of_all_rounds=True,
    )
    second.restore_kept_episodes(
        torch.load(tmp_path / "kept.pt", weights_only=False), rounds_done=1
    )
    (stats,) = run_rounds(second, [hand_made_round([0.1, 0.1, 0.3, 0.3], [4, 1, 6, 6])])
    kept_set = [(k.episode_return, k.round) for k in second.kept_episodes]
    assert kept_set == [(5.0, 0), (2.0, 0), (6.0, 1)]  # A from round 0 beats 4; C is new
    assert stats.kept_count == 3 and stats.gradient_steps == 1


def test_threshold_rejections_and_malformed_rounds():
    algorithm = RejectionSampling(
        policy=cartpole_policy(),
        optim=AdamOptimizerFactory(lr=1e-3),
        samples_per_start=2,
        min_return=3.0,
    )
    (stats,) = run_rounds(algorithm, [hand_made_round([0.1, 0.1, 0.2, 0.2], [3, 1, 2, 2])])
    assert stats.rejected_count == 1 and stats.kept_count == 1
    with pytest.raises(ValueError, match="do not share a start state"):
        run_rounds(algorithm, [hand_made_round([0.1, 0.2, 0.2, 0.2], [3, 1, 2, 2])])
    two_episodes = hand_made_round([0.1, 0.1], [3, 3])
    two_episodes.terminated[0] = True  # the row's first step also ends an episode
    with pytest.raises(ValueError, match="exactly one whole episode"):
        run_rounds(algorithm, [two_episodes])


class RandomActions(RandomActionPolicy):
    """A policy that acts but cannot score its actions."""

    @staticmethod
    def _compile() -> None:
        """Skip Tianshou's numba warm-up."""


def test_rejection_sampling_rejects_a_policy_without_log_likelihoods():
    policy = RandomActions(gym.spaces.Discrete(2))
    with pytest.raises(TypeError, match="log_likelihoods"):
        RejectionSampling(policy=policy, optim=AdamOptimizerFactory(lr=1e-3), samples_per_start=2)


def test_mlp_log_likelihoods_are_the_log_probs_of_the_stored_actions():
    policy = cartpole_policy()
    buffer = hand_made_round([0.1, 0.2], [2, 3])
    batch, indices = buffer.sample(0)
    segments = segments_from_buffer(batch, buffer, indices, "cpu")
    expected = policy.evaluate_segments(segments).log_probs
    torch.testing.assert_close(policy.log_likelihoods(segments), expected)


def test_shared_start_copies_begin_in_the_same_state_and_a_seed_repeats_them():
    env = make_shared_start_vector_env("CartPole-v1", num_start_states=3, samples_per_start=2)
    first, _ = env.reset(seed=4)
    assert np.array_equal(first[0::2], first[1::2]) and len(np.unique(first, axis=0)) == 3
    second, _ = env.reset()
    assert not np.array_equal(first, second)
    assert np.array_equal(env.reset(seed=4)[0], first)
    native = gym.make_vec("CartPole-v1", 2, vectorization_mode="vector_entry_point")
    with pytest.raises(TypeError, match="vectorization_mode='sync'"):
        SharedStartVectorEnv(native, 2)


def test_rejection_sampling_learns_cartpole():
    torch.manual_seed(0)
    env = make_shared_start_vector_env("CartPole-v1", num_start_states=8, samples_per_start=8)
    policy = cartpole_policy()
    algorithm = RejectionSampling(
        policy=policy, optim=AdamOptimizerFactory(lr=3e-3), samples_per_start=8
    )
    collector = VectorEnvCollector(algorithm, env, SegmentBuffer(64 * 500), seed=0)
    collector.reset()
    sampled = []
    with policy_within_training_step(policy):
        for _ in range(10):
            collector.collect(n_episode=64)
            stats = algorithm.update(collector.buffer, batch_size=256, repeat=4)
            collector.reset_buffer()
            sampled.append(stats.sampled_mean_return)
            assert stats.best_of_k_mean_return >= stats.sampled_mean_return
    # a random policy averages about 22
    assert sampled[0] < 40 and np.mean(sampled[-2:]) > 80


def copy_task(samples_per_prompt: int, num_envs: int):
    env = gym.make_vec(
        "textrl/Copy-v0",
        num_envs=num_envs,
        vectorization_mode="vector_entry_point",
        length=2,
        samples_per_prompt=samples_per_prompt,
    )
    torch.manual_seed(0)
    policy = LMActorCriticPolicy(
        model=tiny_llama(env.tokenizer, hidden_size=32, num_layers=2),
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=env.max_prompt_tokens,
    )
    return env, policy


def test_the_k_samples_of_a_prompt_are_contiguous_rows_of_one_group():
    env, policy = copy_task(samples_per_prompt=4, num_envs=12)
    collector = TextCollector(policy, env, seed=0)
    with policy_within_training_step(policy):
        collector.collect(n_episode=24)
    segments = collector.buffer.token_segments("cpu")
    groups = segments.group.reshape(-1, 4)  # (rounds * prompts, K)
    assert (groups == groups[:, :1]).all()
    prompts = segments.prompt_ids.reshape(-1, 4, segments.prompt_ids.shape[1])
    assert (prompts == prompts[:, :1]).all()
    # equal prompts get equal groups in any round, different prompts different ones
    pairs = {
        (tuple(prompt.tolist()), int(group))
        for prompt, group in zip(prompts[:, 0], groups[:, 0], strict=True)
    }
    assert len({prompt for prompt, _ in pairs}) == len({group for _, group in pairs}) == len(pairs)
    with pytest.raises(ValueError, match="multiple of samples_per_prompt"):
        copy_task(samples_per_prompt=4, num_envs=10)


def test_rejection_sampling_raises_the_reward_of_a_tiny_llama_on_the_copy_task():
    env, policy = copy_task(samples_per_prompt=8, num_envs=64)
    algorithm = RejectionSampling(
        policy=policy,
        optim=AdamOptimizerFactory(lr=3e-3),
        samples_per_start=8,
        keep_best_of_all_rounds=True,
    )
    collector = TextCollector(algorithm, env, seed=0)
    sampled = []
    with policy_within_training_step(policy):
        for _ in range(16):
            collector.collect(n_episode=64)
            stats = algorithm.update(collector.buffer, batch_size=None, repeat=4)
            collector.reset_buffer()
            sampled.append(stats.sampled_mean_return)
    # a random policy scores about 0.1 (1 in 9 tokens right, wrong lengths)
    assert np.mean(sampled[:2]) < 0.3 and np.mean(sampled[-3:]) > 0.5
    # the kept set holds one best response per prompt (the task has 9 prompts)
    kept_prompts = [tuple(k.episode.prompt_ids[0].tolist()) for k in algorithm.kept_episodes]
    assert len(kept_prompts) == len(set(kept_prompts)) <= 9


def test_identical_rows_share_one_prefill_and_decode_exactly_as_without_sharing():
    model = tiny_model()
    prompts = ["abc<sep>"] * 3 + ["h<sep>"] * 2 + ["ggg fa<sep>"]
    encoded = TOKENIZER(prompts, padding=True, return_tensors="pt")
    prefill_rows = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_rows.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True,
    )
    decoder = IncrementalDecoder(model, output_hidden_states=True)
    logits = [decoder.prefill(encoded.input_ids, encoded.attention_mask)]
    hook.remove()
    assert prefill_rows == [3]  # one row per distinct prompt
    hidden = [decoder.last_hidden]
    # the K samples diverge after the prompt: different tokens per row
    steps = [torch.tensor([4, 5, 6, 7, 8, 9]), torch.tensor([5, 5, 6, 6, 7, 7])]
    for tokens in steps:
        logits.append(decoder.advance(tokens))
        hidden.append(decoder.last_hidden)
    separate = IncrementalDecoder(model, output_hidden_states=True)
    for row in range(len(prompts)):  # each row alone: nothing to share
        expected = [
            separate.prefill(
                encoded.input_ids[row : row + 1], encoded.attention_mask[row : row + 1]
            )
        ]
        expected_hidden = [separate.last_hidden]
        for tokens in steps:
            expected.append(separate.advance(tokens[row : row + 1]))
            expected_hidden.append(separate.last_hidden)
        for got, want in zip(logits, expected, strict=True):
            torch.testing.assert_close(got[row], want[0], rtol=1e-5, atol=1e-6)
        for got, want in zip(hidden, expected_hidden, strict=True):
            torch.testing.assert_close(got[row], want[0], rtol=1e-5, atol=1e-6)


def test_the_reference_model_of_the_env_prefills_each_prompt_once():
    reference = tiny_model(seed=1)
    env = TextGenerationVectorEnv(
        6,
        tokenizer=TOKENIZER,
        prompts=PROMPTS,
        reward_fn=length_reward,
        max_prompt_tokens=8,
        reference_model=reference,
        samples_per_prompt=3,
    )
    prefill_rows = []
    reference.register_forward_pre_hook(
        lambda module, args, kwargs: prefill_rows.append(kwargs["input_ids"].shape),
        with_kwargs=True,
    )
    observation, info = env.reset(seed=0)
    assert list(info["prompt"][:3]) == [info["prompt"][0]] * 3
    assert prefill_rows[0][0] == len(set(info["prompt"]))


def test_the_example_ends_with_a_json_line_and_writes_tensorboard_logs(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            str(EXAMPLE),
            "--seed",
            "3",
            "--total-steps",
            "2000",
            "--eval-episodes",
            "2",
            "--start-states",
            "2",
            "--samples-per-start",
            "4",
            "--no-progress",
        ],
    )
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"env_id", "seed", "env_steps", "seconds", "eval_mean_return"}
    assert result["seed"] == 3 and result["env_steps"] >= 2000
    run_dir = tmp_path / "runs" / "CartPole-v1-rejection-sampling-seed3"
    assert any(run_dir.glob("events.out.tfevents.*"))
