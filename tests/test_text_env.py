"""TextGenerationEnv and its batched form against hand-checked cases."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the textrl/ ids)
from envs.text_generation import TextGenerationEnv, TextGenerationVectorEnv
from tests.text_fixtures import PROMPTS, TOKENIZER, length_reward, tiny_model

EOS = TOKENIZER.eos_token_id
A, B = TOKENIZER.convert_tokens_to_ids(["a", "b"])


def make_env(**overrides) -> TextGenerationEnv:
    kwargs = dict(
        tokenizer=TOKENIZER,
        prompts=PROMPTS,
        reward_fn=length_reward,
        max_new_tokens=4,
        max_prompt_tokens=8,
    )
    return TextGenerationEnv(**{**kwargs, **overrides})


def test_eos_on_step_k_terminates_with_the_score_on_that_step():
    env = make_env()
    observation, info = env.reset(seed=0)
    prompt_length = 8
    assert observation["attention_mask"][:prompt_length].sum() == len(info["prompt"]) + 1  # + <sep>
    for action in (A, B):
        observation, reward, terminated, truncated, _ = env.step(A if action == A else B)
        assert (reward, terminated, truncated) == (0.0, False, False)
    observation, reward, terminated, truncated, info = env.step(EOS)
    assert terminated and not truncated
    assert reward == 2.0 and info["response"] == "ab"
    assert list(observation["input_ids"][prompt_length : prompt_length + 3]) == [A, B, EOS]
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(A)


def test_the_length_limit_truncates_and_pays_the_missing_eos_penalty():
    env = make_env(missing_eos_penalty=-5.0)
    env.reset(seed=0)
    results = [env.step(A) for _ in range(4)]
    assert [r[3] for r in results] == [False, False, False, True]
    assert not any(r[2] for r in results)
    assert results[-1][1] == 4.0 - 5.0


def test_eos_and_pad_are_different_tokens_and_padding_is_masked():
    assert TOKENIZER.eos_token_id != TOKENIZER.pad_token_id
    env = make_env()
    observation, _ = env.reset(seed=1)
    padded = observation["attention_mask"] == 0
    assert (observation["input_ids"][padded] == TOKENIZER.pad_token_id).all()
    tokenizer = TOKENIZER.__class__(
        tokenizer_object=TOKENIZER.backend_tokenizer, eos_token="<eos>", pad_token="<eos>"
    )
    with pytest.raises(ValueError, match="EOS and PAD are the same token"):
        make_env(tokenizer=tokenizer)


def test_a_seed_reproduces_the_prompts():
    env = make_env()

    def prompts_after_seed() -> list[str]:
        return [env.reset(seed=3)[1]["prompt"]] + [env.reset()[1]["prompt"] for _ in range(5)]

    assert prompts_after_seed() == prompts_after_seed()
    assert len({env.reset(seed=s)[1]["prompt"] for s in range(20)}) > 1


def test_gymnasium_env_checker_passes():
    check_env(make_env())
    check_env(gym.make("textrl/Copy-v0").unwrapped)


@pytest.mark.parametrize("action", [-1, len(TOKENIZER), 1.5, np.float32(2.0)])
def test_invalid_actions_get_a_clear_error(action):
    env = make_env()
    env.reset(seed=0)
    with pytest.raises((ValueError, TypeError), match="token id|integer"):
        env.step(action)


def test_a_plain_reset_step_loop_with_random_actions():
    env = gym.make(
        "textrl/TextGeneration-v0",
        tokenizer=TOKENIZER,
        prompts=PROMPTS,
        reward_fn=length_reward,
        max_new_tokens=6,
        max_prompt_tokens=8,
    )
    env.action_space.seed(0)
    episodes = 0
    observation, _ = env.reset(seed=0)
    for _ in range(200):
        assert env.observation_space.contains(observation)
        observation, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            episodes += 1
            assert reward == float(len(info["response"]))
            observation, _ = env.reset()
    assert episodes >= 30


def test_prompts_from_a_jsonl_file_and_too_long_prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "abc"}\n{"prompt": "hhhhhhhhhhhhhhhhhhhh"}\n')
    env = make_env(prompts=str(path))
    with pytest.raises(ValueError, match="more than max_prompt_tokens=8"):
        for seed in range(20):
            env.reset(seed=seed)


def test_prompts_from_a_generator_are_read_in_order_until_it_runs_out():
    env = make_env(prompts=(prompt for prompt in ["abc", "de"]))
    assert [env.reset(seed=0)[1]["prompt"], env.reset()[1]["prompt"]] == ["abc", "de"]
    with pytest.raises(ValueError, match="the prompt iterator ran out"):
        env.reset()


def test_reference_log_probs_equal_a_full_forward_of_the_reference_model():
    reference = tiny_model(seed=1)
    env = TextGenerationVectorEnv(
        3,
        tokenizer=TOKENIZER,
        prompts=PROMPTS,
        reward_fn=length_reward,
        max_new_tokens=5,
        max_prompt_tokens=8,
        reference_model=reference,
    )
    observation, _ = env.reset(seed=0)
    actions = np.array([[A, B, A, B, A], [B, EOS, A, A, A], [A, A, A, A, EOS]])
    logged = []
    for step in range(5):
        _, _, _, _, info = env.step(actions[:, step])
        logged.append(info["reference_log_prob"])
    logged = np.stack(logged, axis=1)  # (3, 5)
    for row in range(3):
        prompt = observation["input_ids"][row][observation["attention_mask"][row] == 1].tolist()
        length = 2 if row == 1 else 5
        sequence = torch.tensor([prompt + actions[row, :length].tolist()])
        log_probs = torch.log_softmax(reference(sequence).logits[0], -1)
        expected = [log_probs[len(prompt) - 1 + t, actions[row, t]].item() for t in range(length)]
        np.testing.assert_allclose(logged[row, :length], expected, rtol=1e-4, atol=1e-5)
        assert np.isnan(logged[row, length:]).all()  # finished rows report nothing


def test_vector_env_through_gym_make_vec_runs_rows_in_lockstep():
    env = gym.make_vec("textrl/Reverse-v0", num_envs=4, vectorization_mode="vector_entry_point")
    observation, info = env.reset(seed=0)
    assert observation["input_ids"].shape == (4, env.window)
    target = [prompt[::-1] for prompt in info["prompt"]]
    tokenizer = env.tokenizer
    rewards = np.zeros(4)
    for step in range(4):
        actions = np.array(
            [
                tokenizer.convert_tokens_to_ids(t[step]) if step < 3 else tokenizer.eos_token_id
                for t in target
            ]
        )
        _, reward, terminated, truncated, _ = env.step(actions)
        rewards += reward
    assert terminated.all() and rewards.tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="lockstep"):
        env.reset(options={"reset_mask": np.array([True, False, False, False])})
