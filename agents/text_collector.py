"""A Tianshou collector for text: lockstep batches of episodes into an ``EpisodeBuffer``.

Each round resets the batched text env, lets the policy pick one token per row
per step until every row has ended, and stores each episode once: prompt and
response tokens, the policy's log-probs and values at acting time, the
reference model's log-probs, the rewards, and the row's start-state id (the env's
``info["group"]``: rows sampled from one prompt share it). Rows advance together, so column
``t`` of the round is response token ``t`` of every row still running: no
per-row Python work per token. With ``synced`` (a policy whose LM is sharded by FSDP) the
rounds of all ranks step together: see ``TextCollector.__init__``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tianshou.algorithm.algorithm_base import Algorithm, Policy
from tianshou.data import Batch

from agents.batched_collector import BatchedEnvCollector
from agents.episode_buffer import EpisodeBuffer
from agents.lm_policy import LMActorCriticPolicy
from envs.text_generation import TextGenerationVectorEnv
from textrl import distributed


class TextCollector(BatchedEnvCollector):
    """Collects whole text episodes from a ``TextGenerationVectorEnv``."""

    buffer_type = EpisodeBuffer

    def __init__(
        self,
        policy: Policy | Algorithm,
        env: TextGenerationVectorEnv,
        buffer: EpisodeBuffer | None = None,
        seed: int | None = None,
        synced: bool = False,
    ) -> None:
        """
        :param synced: step every round until the rows of every rank have ended (Hugging
            Face's ``generate(synced_gpus=True)``), a rank whose rows have ended running the
            policy's ``idle_step``. Needed when the policy's LM is sharded by FSDP, whose
            forwards are collectives; every rank then collects as many rounds.
        """
        if not isinstance(env, TextGenerationVectorEnv):
            raise TypeError(
                f"TextCollector drives a TextGenerationVectorEnv, got {type(env).__name__}"
            )
        self._text_env = env
        self._seed = seed
        self._synced = synced
        default_buffer = EpisodeBuffer(
            capacity=max(1024, env.num_envs),
            max_prompt_tokens=env.max_prompt_tokens,
            max_new_tokens=env.max_new_tokens,
            pad_token_id=env.tokenizer.pad_token_id,
        )
        super().__init__(
            policy,
            env,
            buffer if buffer is not None else default_buffer,
            env.num_envs,
            env.single_action_space,
        )
        if synced and not isinstance(self.policy, LMActorCriticPolicy):
            raise TypeError(
                f"synced collection steps an idle policy with idle_step, which "
                f"{type(self.policy).__name__} lacks; use an LMActorCriticPolicy or synced=False"
            )

    def reset_env(self, gym_reset_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any]:
        """Each round of ``collect`` resets the env itself (lockstep batches)."""
        return None, None

    def _collect_rows(
        self,
        n_step: int | None,
        n_episode: int | None,
        random: bool,
        gym_reset_kwargs: dict[str, Any] | None,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        returns: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        tokens = 0
        while (n_episode and sum(len(r) for r in returns) < n_episode) or (
            n_step and tokens < n_step
        ):
            episode_returns, episode_lengths = self._collect_round(random)
            returns.append(episode_returns)
            lengths.append(episode_lengths)
            tokens += int(episode_lengths.sum())
        return np.concatenate(returns), np.concatenate(lengths), tokens

    def _collect_round(self, random: bool) -> tuple[np.ndarray, np.ndarray]:
        """One lockstep batch of episodes; returns their returns and lengths."""
        env = self._text_env
        seed, self._seed = self._seed, None
        observation, reset_info = env.reset(seed=seed)
        rows, limit = self._num_envs, env.max_new_tokens
        response = np.full((rows, limit), env.tokenizer.pad_token_id, dtype=np.int64)
        per_token = {
            name: np.zeros((rows, limit), dtype=np.float32)
            for name in ("log_probs", "reference_log_probs", "values", "rewards")
        }
        per_token["reference_log_probs"][:] = np.nan
        terminated = np.zeros((rows, limit), dtype=bool)
        truncated = np.zeros((rows, limit), dtype=bool)
        running = np.ones(rows, dtype=bool)
        prompt_ids = observation["input_ids"][:, : env.max_prompt_tokens].copy()
        prompt_mask = observation["attention_mask"][:, : env.max_prompt_tokens].copy()
        step = 0
        while self._any_row_running(running):
            if not running.any():  # synced: this rank is done, others still decode
                self.policy.idle_step()
                continue
            if random:
                actions = np.asarray(env.action_space.sample())
                log_probs = values = np.full(rows, np.nan, dtype=np.float32)
            else:
                with torch.no_grad():
                    result = self.policy(Batch(obs=Batch(observation), info=None))
                actions = np.asarray(result.act)
                log_probs, values = result.policy.log_prob, result.policy.value
            observation, rewards, ended, cut, info = env.step(actions)
            response[running, step] = actions[running]
            per_token["log_probs"][running, step] = log_probs[running]
            per_token["values"][running, step] = values[running]
            per_token["rewards"][running, step] = rewards[running]
            if "reference_log_prob" in info:
                per_token["reference_log_probs"][running, step] = info["reference_log_prob"][
                    running
                ]
            terminated[:, step] = ended
            truncated[:, step] = cut
            running &= ~(ended | cut)
            step += 1
        response_mask = np.arange(limit)[None, :] < (terminated | truncated).argmax(1)[:, None] + 1
        self.buffer.add_episodes(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response,
            response_mask=response_mask,
            terminated=terminated,
            truncated=truncated,
            group=reset_info["group"],
            **per_token,
        )
        return per_token["rewards"].sum(1), response_mask.sum(1)

    def _any_row_running(self, running: np.ndarray) -> bool:
        """Whether a row of this round still runs here or, when synced, on any rank."""
        if not self._synced:
            return bool(running.any())
        return distributed.any_rank(torch.tensor(running.any(), device=self._text_env.device))
