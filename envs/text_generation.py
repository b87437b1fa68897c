"""Text generation as a Gymnasium environment: state = prompt + tokens, action = next token.

Observation (``Dict``), a fixed window of ``L = max_prompt_tokens + max_new_tokens``
token slots, the same layout at every step:

- ``input_ids``: ``Box(0, vocab_size - 1, (L,), int64)``. The prompt is left-padded into
  slots ``[0, P)`` and response token ``t`` sits in slot ``P + t``; the rest is PAD.
- ``attention_mask``: ``Box(0, 1, (L,), int64)``, 1 on real tokens.

Why this layout: it has a fixed shape (Tianshou buffers and ``check_env`` need
one), the prompt/response boundary never moves (a policy reads the response
as ``input_ids[P:]``), and it is exactly what a causal LM consumes with left
padding and position ids from the mask.

Action: ``Discrete(vocab_size)``, the next token id. An episode ends with
``terminated`` when the action is EOS and with ``truncated`` when
``max_new_tokens`` were generated without one (EOS and PAD are different
tokens). Reward: 0 on every step but the last, where ``reward_fn`` scores the
(prompt, response) pair, plus ``missing_eos_penalty`` on truncation.
``info["reference_log_prob"]`` is the action's log-probability under the frozen
reference model (KV-cached, one forward per step over the batch), so an agent's
KL term ``-beta * (log pi - log pi_ref)`` is exact.

``TextGenerationVectorEnv`` drives ``num_envs`` sequences as one tensor on the
chosen device; its episodes run in lockstep (like ``model.generate``): a
finished row waits, ignoring its actions, until every row is done, and
``reset`` starts the next batch (``autoreset_mode`` DISABLED).
``TextGenerationEnv`` is the single-sequence form.

With ``samples_per_prompt = K`` each ``reset`` draws ``num_envs // K`` prompts and
gives each to ``K`` contiguous rows: K samples from one start state, what
best-of-K rejection sampling needs (the policy's and the reference's decoders
prefill each distinct prompt once). ``info["group"]`` names each row's start
state, a 64-bit fingerprint of its prompt, equal for equal prompts in any reset,
so samples of one prompt can be grouped within a batch and across rounds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textrl.chat import format_prompt
from textrl.decoding import IncrementalDecoder
from textrl.prompts import PromptSource
from textrl.sampling import scaled_log_probs

RewardFunction = Callable[[Sequence[str], Sequence[str]], Sequence[float]]
"""Scores a batch: ``reward_fn(prompts, responses) -> one float per pair``."""


def text_observation_space(vocab_size: int, window: int) -> spaces.Dict:
    return spaces.Dict(
        {
            "input_ids": spaces.Box(0, vocab_size - 1, (window,), np.int64),
            "attention_mask": spaces.Box(0, 1, (window,), np.int64),
        }
    )


def prompt_fingerprint(prompt: str) -> int:
    """A signed 64-bit id of ``prompt``, the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


class TextGenerationVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` text episodes as one batch on ``device``; see the module docstring."""

    metadata = {"autoreset_mode": AutoresetMode.DISABLED, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 1,
        *,
        tokenizer: PreTrainedTokenizerBase,
        prompts: PromptSource | Sequence[str] | str | Callable[[np.random.Generator], str],
        reward_fn: RewardFunction,
        max_new_tokens: int = 32,
        max_prompt_tokens: int = 64,
        reference_model: PreTrainedModel | None = None,
        reference_temperature: float = 1.0,
        missing_eos_penalty: float | None = None,
        use_chat_template: bool = True,
        device: str | torch.device = "cpu",
        samples_per_prompt: int = 1,
    ) -> None:
        if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer needs both an EOS and a PAD token")
        if tokenizer.eos_token_id == tokenizer.pad_token_id:
            raise ValueError(
                "EOS and PAD are the same token; give the tokenizer a distinct PAD "
                "(textrl.models.ensure_distinct_padding)"
            )
        if samples_per_prompt < 1 or num_envs % samples_per_prompt:
            raise ValueError(
                f"num_envs={num_envs} must be a positive multiple of samples_per_prompt="
                f"{samples_per_prompt} (each prompt fills samples_per_prompt rows)"
            )
        self.num_envs = num_envs
        self.samples_per_prompt = samples_per_prompt
        self.tokenizer = tokenizer
        self.prompt_source = PromptSource.coerce(prompts)
        self.reward_fn = reward_fn
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.missing_eos_penalty = missing_eos_penalty
        self.use_chat_template = use_chat_template
        self.reference_temperature = reference_temperature
        self.device = torch.device(device)
        self.vocab_size = len(tokenizer)
        self.window = max_prompt_tokens + max_new_tokens
        self.single_observation_space = text_observation_space(self.vocab_size, self.window)
        self.single_action_space = spaces.Discrete(self.vocab_size)
        self.observation_space = gym.vector.utils.batch_space(
            self.single_observation_space, num_envs
        )
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._reference = (
            IncrementalDecoder(reference_model) if reference_model is not None else None
        )
        self._reference_logits: torch.Tensor | None = None
        self._input_ids = torch.full(
            (num_envs, self.window), tokenizer.pad_token_id, dtype=torch.long, device=self.device
        )
        self._attention_mask = torch.zeros_like(self._input_ids)
        self._response_lengths = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self._done = np.ones(num_envs, dtype=bool)
        self._prompts: list[str] = []

    def _tokenize_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [format_prompt(self.tokenizer, p, self.use_chat_template) for p in prompts]
        encoded = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        too_long = [
            (p, len(ids))
            for p, ids in zip(prompts, encoded, strict=True)
            if len(ids) > self.max_prompt_tokens
        ]
        if too_long:
            prompt, length = too_long[0]
            raise ValueError(
                f"prompt {prompt[:60]!r} has {length} tokens, more than max_prompt_tokens="
                f"{self.max_prompt_tokens}; raise max_prompt_tokens or shorten the prompts"
            )
        ids = torch.full(
            (len(prompts), self.max_prompt_tokens), self.tokenizer.pad_token_id, dtype=torch.long
        )
        mask = torch.zeros_like(ids)
        for row, tokens in enumerate(encoded):  # once per episode, not per token
            if tokens:
                ids[row, -len(tokens) :] = torch.tensor(tokens)
                mask[row, -len(tokens) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _observation(self) -> dict[str, np.ndarray]:
        # copies: the caller keeps observations while the env writes the next token in place
        return {
            "input_ids": self._input_ids.cpu().numpy().copy(),
            "attention_mask": self._attention_mask.cpu().numpy().copy(),
        }

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        if isinstance(seed, list):
            seed = seed[0]
        super().reset(seed=seed)
        if options and "reset_mask" in options and not np.all(options["reset_mask"]):
            raise ValueError(
                "TextGenerationVectorEnv runs its episodes in lockstep and resets all rows "
                "together; call reset() without a partial reset_mask"
            )
        distinct = self.prompt_source.sample(
            self.np_random, self.num_envs // self.samples_per_prompt
        )
        self._prompts = [prompt for prompt in distinct for _ in range(self.samples_per_prompt)]
        prompt_ids, prompt_mask = self._tokenize_prompts(self._prompts)
        self._input_ids.fill_(self.tokenizer.pad_token_id)
        self._attention_mask.zero_()
        self._input_ids[:, : self.max_prompt_tokens] = prompt_ids
        self._attention_mask[:, : self.max_prompt_tokens] = prompt_mask
        self._response_lengths.zero_()
        self._done = np.zeros(self.num_envs, dtype=bool)
        if self._reference is not None:
            self._reference_logits = self._reference.prefill(prompt_ids, prompt_mask)
        info = {
            "prompt": np.array(self._prompts, dtype=object),
            "group": np.array([prompt_fingerprint(p) for p in self._prompts], dtype=np.int64),
        }
        return self._observation(), info

    def _validated_actions(self, actions: Any) -> torch.Tensor:
        array = np.asarray(actions)
        if array.shape != (self.num_envs,):
            raise ValueError(
                f"expected {self.num_envs} actions (one token id per row), got shape {array.shape}"
            )
        if not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"actions are token ids and must be integers, got dtype {array.dtype}")
        if (array < 0).any() or (array >= self.vocab_size).any():
            bad = array[(array < 0) | (array >= self.vocab_size)][0]
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {self.vocab_size})")
        return torch.as_tensor(array, dtype=torch.long, device=self.device)

    def step(
        self, actions: Any
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._done.all():
            raise RuntimeError("every episode of this batch has ended; call reset() first")
        tokens = self._validated_actions(actions)
        active_np = ~self._done
        active = torch.as_tensor(active_np, device=self.device)
        rows = torch.nonzero(active).squeeze(-1)
        slots = self.max_prompt_tokens + self._response_lengths[rows]
        self._input_ids[rows, slots] = tokens[rows]
        self._attention_mask[rows, slots] = 1
        self._response_lengths += active.long()
        info: dict[str, Any] = {}
        if self._reference is not None:
            reference = scaled_log_probs(self._reference_logits, self.reference_temperature)
            chosen = reference.gather(-1, tokens[:, None]).squeeze(-1).cpu().numpy()
            info["reference_log_prob"] = np.where(active_np, chosen, np.nan)
            info["_reference_log_prob"] = active_np.copy()
        is_eos = (tokens == self.tokenizer.eos_token_id).cpu().numpy()
        at_limit = (self._response_lengths >= self.max_new_tokens).cpu().numpy()
        terminated = active_np & is_eos
        truncated = active_np & ~is_eos & at_limit
        finishing = terminated | truncated
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        if finishing.any():
            rewards[finishing], responses = self._score(np.flatnonzero(finishing))
            if self.missing_eos_penalty is not None:
                rewards[truncated] += self.missing_eos_penalty
            info["response"] = np.array([""] * self.num_envs, dtype=object)
            info["response"][finishing] = responses
            info["_response"] = finishing.copy()
        self._done |= finishing
        if self._reference is not None and not self._done.all():
            self._reference_logits = self._reference.advance(tokens, active)
        return self._observation(), rewards, terminated, truncated, info

    def _score(self, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Reward-function scores and decoded responses of the finishing ``rows``."""
        start = self.max_prompt_tokens
        responses = []
        for row in rows:  # once per finished episode
            length = int(self._response_lengths[row])
            ids = self._input_ids[row, start : start + length].tolist()
            responses.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        prompts = [self._prompts[row] for row in rows]
        scores = np.asarray(self.reward_fn(prompts, responses), dtype=np.float64)
        if scores.shape != (len(rows),):
            raise ValueError(f"reward_fn returned shape {scores.shape} for {len(rows)} responses")
        return scores, responses

    @property
    def prompts(self) -> list[str]:
        """The raw prompts of the current batch."""
        return list(self._prompts)


class TextGenerationEnv(gym.Env):
    """One text episode at a time: ``TextGenerationVectorEnv`` with a single row."""

    metadata = {"render_modes": []}

    def __init__(self, **kwargs: Any) -> None:
        self._batch = TextGenerationVectorEnv(num_envs=1, **kwargs)
        self.observation_space = self._batch.single_observation_space
        self.action_space = self._batch.single_action_space
        self.tokenizer = self._batch.tokenizer

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        observation, info = self._batch.reset(seed=seed, options=options)
        return _first_row(observation), {"prompt": info["prompt"][0]}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if not np.issubdtype(np.asarray(action).dtype, np.integer) or np.ndim(action) != 0:
            raise TypeError(f"the action is one token id (an integer), got {action!r}")
        observation, rewards, terminated, truncated, info = self._batch.step(np.array([action]))
        row_info = {key: value[0] for key, value in info.items() if not key.startswith("_")}
        return (
            _first_row(observation),
            float(rewards[0]),
            bool(terminated[0]),
            bool(truncated[0]),
            row_info,
        )


def _first_row(observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {key: value[0] for key, value in observation.items()}
