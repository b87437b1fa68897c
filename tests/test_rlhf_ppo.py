"""RLHF with PPO: the LM update's mechanics and the trainer end to end on a tiny model."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from tianshou.algorithm.optim import AdamOptimizerFactory, TorchOptimizerFactory
from tianshou.utils.torch_utils import policy_within_training_step

from agents.lm_policy import LMActorCriticPolicy
from agents.ppo import PPO
from agents.text_collector import TextCollector
from tests.text_fixtures import PROMPTS, TOKENIZER, text_env_and_policy, tiny_model
from textrl.jsonl import write_jsonl_atomically
from textrl.models import load_causal_lm
from textrl.rlhf_ppo import RLHFConfig, train_rlhf_ppo, write_rlhf_report


def a_count_reward(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
    """Learnable from scratch: the share of 'a' characters, 0 for an empty response."""
    return [response.count("a") / max(len(response), 1) for response in responses]


def collected_rollout(policy_seed: int = 0, reference_seed: int | None = 1):
    env, policy = text_env_and_policy(num_envs=8, reference_seed=reference_seed)
    env.reward_fn = a_count_reward
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-3), kl_coef=0.1)
    collector = TextCollector(algorithm, env, seed=0)
    with policy_within_training_step(policy):
        collector.collect(n_episode=8)
    return env, policy, algorithm, collector


def test_the_policy_scores_the_reference_in_one_pass_exactly_as_the_env_does_per_token():
    env, policy, _, collector = collected_rollout()
    segments = collector.buffer.token_segments("cpu")
    reference = env._reference.model  # the env's per-token reference
    policy_with_reference = LMActorCriticPolicy(
        model=policy.model,
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=env.max_prompt_tokens,
        reference_model=reference,
    )
    one_pass = policy_with_reference.reference_log_probs(segments)
    valid = segments.mask.bool()
    torch.testing.assert_close(
        one_pass[valid], segments.reference_log_probs[valid], atol=1e-5, rtol=1e-5
    )


def test_the_reference_stays_out_of_the_policys_parameters_and_state():
    env, policy = text_env_and_policy(reference_seed=None)
    with_reference = LMActorCriticPolicy(
        model=policy.model,
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=env.max_prompt_tokens,
        reference_model=tiny_model(seed=5),
    )
    assert sum(p.numel() for p in with_reference.parameters()) == sum(
        p.numel() for p in policy.parameters()
    )
    assert with_reference.state_dict().keys() == policy.state_dict().keys()


def test_gradient_accumulation_takes_the_same_step_as_the_whole_minibatch():
    def parameters_after_update(accumulation: int) -> list[torch.Tensor]:
        _, policy, _, collector = collected_rollout()
        torch.manual_seed(3)
        algorithm = PPO(  # plain SGD, no clipping: a mis-scaled gradient changes the step
            policy=policy,
            optim=TorchOptimizerFactory(torch.optim.SGD, lr=0.5),
            kl_coef=0.1,
            max_grad_norm=None,
            gradient_accumulation_steps=accumulation,
        )
        with policy_within_training_step(policy):
            algorithm.update(collector.buffer, batch_size=None, repeat=2)
        return [p.detach().clone() for p in policy.parameters()]

    for whole, accumulated in zip(
        parameters_after_update(1), parameters_after_update(4), strict=True
    ):
        torch.testing.assert_close(whole, accumulated, atol=1e-6, rtol=1e-5)


def test_with_lora_the_reference_is_the_base_model_and_only_the_adapter_trains():
    from peft import LoraConfig, get_peft_model  # the 'lora' extra, part of 'dev'

    env, base_policy = text_env_and_policy(num_envs=8, reference_seed=None)
    env.reward_fn = a_count_reward
    base_weights = copy.deepcopy(base_policy.model.state_dict())
    model = get_peft_model(
        base_policy.model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    )
    policy = LMActorCriticPolicy(
        model=model,
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=env.max_prompt_tokens,
    )
    algorithm = PPO(policy=policy, optim=AdamOptimizerFactory(lr=1e-2), kl_coef=0.1)
    collector = TextCollector(algorithm, env, seed=0)
    with policy_within_training_step(policy):
        collector.collect(n_episode=8)
        first = algorithm.update(collector.buffer, batch_size=None, repeat=1)
        collector.reset_buffer()
        collector.collect(n_episode=8)
        second = algorithm.update(collector.buffer, batch_size=None, repeat=1)
    assert first.sequence_kl == pytest.approx(0.0, abs=1e-5)  # LoRA's B starts at zero
    assert second.sequence_kl != pytest.approx(0.0, abs=1e-4)
    with model.disable_adapter():
        for name, value in model.get_base_model().state_dict().items():
            if "lora_" not in name:
                key = name.replace(".base_layer", "")
                torch.testing.assert_close(value, base_weights[key])


@pytest.fixture
def tiny_sft_checkpoint(tmp_path):
    directory = tmp_path / "sft"
    tiny_model(seed=0).save_pretrained(directory)
    TOKENIZER.save_pretrained(directory)
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl_atomically(prompts, ({"prompt": p, "is_safety": False} for p in PROMPTS))
    return directory, prompts


def tiny_config(checkpoint, prompts, output_dir, iterations: int, **overrides) -> RLHFConfig:
    settings = dict(
        policy=str(checkpoint),
        helpfulness_rm="unused: a reward function is given",
        output_dir=output_dir,
        prompts=prompts,
        iterations=iterations,
        batch_size=32,
        minibatch_size=8,
        epochs=2,
        learning_rate=3e-3,
        kl_coef=0.02,
        max_new_tokens=6,
        max_prompt_tokens=8,
        save_every=1,
    )
    return RLHFConfig(**{**settings, **overrides})


@pytest.mark.slow
def test_rlhf_ppo_raises_the_reward_with_a_bounded_kl_and_writes_a_report(
    tiny_sft_checkpoint, tmp_path
):
    checkpoint, prompts = tiny_sft_checkpoint
    config = tiny_config(
        checkpoint,
        prompts,
        tmp_path / "ppo",
        iterations=12,
        kl_coef=0.1,
        target_kl=2.0,
        kl_horizon=32,
    )
    result = train_rlhf_ppo(config, reward=a_count_reward)
    rollouts = result.history[1:]
    rewards = [h["objective/rlhf_reward"] for h in rollouts]
    kls = [h["objective/kl"] for h in rollouts]
    betas = [h["objective/kl_coef"] for h in rollouts]
    print("rewards", np.round(rewards, 2), "kl", np.round(kls, 2), "beta", np.round(betas, 3))
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.1
    # the controller lowers beta while the KL is under target, raises it once over, and
    # pulls the KL (nats per 6-token response) back down from its peak
    assert min(betas) < betas[0] < betas[-1]
    assert max(kls) < 4 * config.target_kl
    assert kls[-1] < max(kls)
    model, _ = load_causal_lm(result.checkpoint)  # a plain Hugging Face checkpoint
    assert model.config.vocab_size == len(TOKENIZER)
    report = write_rlhf_report(config, result)
    assert "| iteration |" in report.read_text()


def test_a_resumed_rlhf_run_ends_with_the_same_weights(tiny_sft_checkpoint, tmp_path):
    checkpoint, prompts = tiny_sft_checkpoint

    scored: dict[str, int] = {}

    def final_weights(output_dir, stop_first: bool) -> dict[str, torch.Tensor]:
        config = tiny_config(checkpoint, prompts, output_dir, iterations=3)
        if stop_first:
            train_rlhf_ppo(config, stop_after_iterations=1, reward=a_count_reward)
        responses = []

        def reward(prompts: Sequence[str], batch: Sequence[str]) -> list[float]:
            responses.extend(batch)
            return a_count_reward(prompts, batch)

        result = train_rlhf_ppo(config, reward=reward)
        scored[output_dir.name] = len(responses)
        model, _ = load_causal_lm(result.checkpoint)
        return model.state_dict()

    straight = final_weights(tmp_path / "straight", stop_first=False)
    resumed = final_weights(tmp_path / "resumed", stop_first=True)
    assert scored["resumed"] == scored["straight"] * 2 // 3  # it ran iterations 2 and 3 only
    for name, value in straight.items():
        torch.testing.assert_close(resumed[name], value, atol=0, rtol=0)


def test_with_the_gold_reward_the_rollouts_reward_is_the_gold_judges_score(
    tiny_sft_checkpoint, tmp_path
):
    checkpoint, _ = tiny_sft_checkpoint
    config = tiny_config(
        checkpoint,
        None,  # the world's RLHF prompts, which the gold judges know
        tmp_path / "ppo",
        iterations=1,
        helpfulness_rm=None,
        gold_reward=True,
        max_prompt_tokens=64,
        eval_every=1000,
    )
    rollout = [h for h in train_rlhf_ppo(config).history if "objective/rlhf_reward" in h][0]
    assert rollout["objective/gold_reward"] > 0  # not a batch of zeros, equal by default
    # objective/gold_reward is the world's judgement of the same responses, computed apart
    assert rollout["objective/rlhf_reward"] == pytest.approx(rollout["objective/gold_reward"])


def test_the_gold_reward_refuses_prompts_the_world_does_not_know(tiny_sft_checkpoint, tmp_path):
    checkpoint, prompts = tiny_sft_checkpoint
    config = tiny_config(
        checkpoint, prompts, tmp_path / "ppo", iterations=1, helpfulness_rm=None, gold_reward=True
    )
    with pytest.raises(ValueError, match="world's prompts"):
        train_rlhf_ppo(config)
