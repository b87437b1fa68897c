"""LM policy: KV-cached acting agrees with one-pass scoring; the collector stores O(tokens)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tianshou.algorithm.optim import AdamOptimizerFactory
from tianshou.data import Batch

import envs  # noqa: F401  (registers the textrl/ ids)
from agents import PPO
from agents.episode_buffer import EpisodeBuffer
from agents.lm_policy import LMActorCriticPolicy
from agents.text_collector import TextCollector
from tests.text_fixtures import TOKENIZER, text_env_and_policy, tiny_model
from textrl.decoding import IncrementalDecoder
from textrl.models import tiny_llama
from textrl.sampling import SamplingConfig, filter_logits, sample_next_tokens


def build(num_envs: int = 4, max_new_tokens: int = 6):
    return text_env_and_policy(num_envs, max_new_tokens, sampling=SamplingConfig(temperature=0.7))


def test_incremental_decoding_equals_a_full_forward_for_left_padded_batches():
    model = tiny_model()
    encoded = TOKENIZER(["abc<sep>", "h<sep>", "ggg fa<sep>"], padding=True, return_tensors="pt")
    decoder = IncrementalDecoder(model)
    steps = [torch.tensor([4, 5, 6]), torch.tensor([7, 8, 9]), torch.tensor([5, 5, 5])]
    active = [
        torch.tensor([True, True, True]),
        torch.tensor([True, False, True]),
        torch.tensor([True, True, False]),
    ]
    logits = [decoder.prefill(encoded.input_ids, encoded.attention_mask)]
    logits += [decoder.advance(tokens, rows) for tokens, rows in zip(steps, active, strict=True)]
    for row in range(3):
        sequence = encoded.input_ids[row][encoded.attention_mask[row].bool()].tolist()
        expected = [model(torch.tensor([sequence])).logits[0, -1]]
        for tokens, rows in zip(steps, active, strict=True):
            if rows[row]:
                sequence.append(int(tokens[row]))
            expected.append(model(torch.tensor([sequence])).logits[0, -1])
        fed = [True] + [bool(rows[row]) for rows in active]
        for got, want, was_fed in zip(logits, expected, fed, strict=True):
            if was_fed:
                torch.testing.assert_close(got[row], want, rtol=1e-4, atol=1e-5)


def test_acting_log_probs_and_values_equal_one_pass_segment_scoring():
    env, policy = build()
    collector = TextCollector(policy, env, seed=0)
    with policy_within_training_step(policy):
        collector.collect(n_episode=8)
    stored = collector.buffer.episodes()
    segments = collector.buffer.token_segments("cpu")
    with torch.no_grad():
        evaluation = policy.evaluate_segments(segments)
    mask = segments.mask.bool()
    torch.testing.assert_close(
        evaluation.log_probs[mask], torch.as_tensor(stored["log_probs"])[mask], rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(
        evaluation.values[mask], torch.as_tensor(stored["values"])[mask], rtol=1e-4, atol=1e-4
    )
    # V(s'_t) is V(s_{t+1}) inside a response
    inner = mask[:, 1:] & mask[:, :-1]
    torch.testing.assert_close(
        evaluation.next_values[:, :-1][inner], evaluation.values[:, 1:][inner]
    )


def test_episode_storage_grows_linearly_with_episodes_not_with_steps_squared():
    env, policy = build(num_envs=4, max_new_tokens=12)
    collector = TextCollector(policy, env, EpisodeBuffer(64, 8, 12, TOKENIZER.pad_token_id), seed=0)
    sizes = []
    with policy_within_training_step(policy):
        for _ in range(3):
            collector.collect(n_episode=4)
            sizes.append(collector.buffer.nbytes)
    assert sizes[1] == 2 * sizes[0] and sizes[2] == 3 * sizes[0]
    per_episode = sizes[0] / 4
    window = 8 + 12
    assert per_episode <= 8 * window * 8  # a few arrays of P + T slots, not a prefix per step


def test_policy_resynchronises_when_a_new_batch_starts():
    env, policy = build(num_envs=2)
    observation, _ = env.reset(seed=0)
    first = policy(Batch(obs=Batch(observation), info=None))
    env.step(first.act)
    observation, _ = env.reset(seed=5)  # a different batch: the policy must prefill again
    again = policy(Batch(obs=Batch(observation), info=None))
    fresh_env, fresh_policy = build(num_envs=2)
    fresh_observation, _ = fresh_env.reset(seed=5)
    expected = fresh_policy(Batch(obs=Batch(fresh_observation), info=None))
    np.testing.assert_allclose(again.policy.value, expected.policy.value, rtol=1e-5)


def test_min_new_tokens_forbids_eos_and_greedy_takes_the_argmax():
    logits = torch.tensor([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]])
    banned = torch.tensor([[False, True, False], [False, False, False]])
    tokens, log_probs = sample_next_tokens(
        logits, SamplingConfig(temperature=1.0), greedy=True, banned=banned
    )
    assert tokens.tolist() == [2, 0]
    torch.testing.assert_close(log_probs, torch.log_softmax(logits, -1)[[0, 1], [2, 0]])


def test_top_k_and_top_p_filters_keep_the_expected_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2, top_p=None)).tolist() == [
        [True, True, False, False]
    ]
    assert torch.isfinite(filter_logits(logits, top_k=None, top_p=0.8)).tolist() == [
        [True, True, False, False]
    ]
    assert torch.isfinite(filter_logits(logits, top_k=None, top_p=0.81)).tolist() == [
        [True, True, True, False]
    ]
    torch.manual_seed(0)
    draws = {sample_next_tokens(logits, SamplingConfig(top_p=0.8))[0].item() for _ in range(200)}
    assert draws == {0, 1}


def test_the_same_ppo_class_updates_a_language_model_from_text_episodes():
    env, policy = build()
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-3), gamma=1.0)
    assert type(algorithm) is PPO
    collector = TextCollector(algorithm, env, seed=0)
    before = [p.detach().clone() for p in policy.model.parameters()]
    with policy_within_training_step(policy):
        collector.collect(n_episode=8)
        stats = algorithm.update(collector.buffer, batch_size=None, repeat=2)
    assert stats.gradient_steps == 2 and np.isfinite(stats.loss)
    assert any(
        not torch.equal(b, p) for b, p in zip(before, policy.model.parameters(), strict=True)
    )


@pytest.mark.slow
def test_ppo_with_a_tiny_llama_learns_the_copy_task():
    torch.manual_seed(0)
    env = gym.make_vec(
        "textrl/Copy-v0", num_envs=32, vectorization_mode="vector_entry_point", length=2
    )
    policy = LMActorCriticPolicy(
        model=tiny_llama(env.tokenizer, hidden_size=64, num_layers=2),
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=env.max_prompt_tokens,
    )
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=3e-3), gamma=1.0)
    collector = TextCollector(algorithm, env, seed=0)
    mean_rewards = []
    with policy_within_training_step(policy):
        for _ in range(30):
            mean_rewards.append(collector.collect(n_episode=64).returns_stat.mean)
            algorithm.update(collector.buffer, batch_size=None, repeat=4)
            collector.reset_buffer()
    # a random policy scores about 0.1 (1 in 9 tokens right, wrong lengths)
    assert np.mean(mean_rewards[:3]) < 0.25
    assert np.mean(mean_rewards[-5:]) > 0.4
