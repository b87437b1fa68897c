"""Text episodes stored once each: prompt tokens, response tokens and per-token data.

A token-level Tianshou buffer would store the observation (the whole growing
prefix) at every step, O(T^2) per response. Here each episode is one row of
fixed-size arrays (``P`` prompt slots, ``T`` response slots), so memory grows
linearly with the number of episodes and their length limit; nothing is
copied per step. The buffer answers the few calls Tianshou's on-policy
trainer and ``Algorithm.update`` make (``sample(0)``, ``len``, ``reset``,
``hasnull``), and hands ``agents.PPO`` its rows as ``TokenSegments``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tianshou.data import Batch

from agents.row_batch import RowBatch


@dataclass(frozen=True)
class TokenSegments(RowBatch):
    """One text episode per row; ``T`` is the response length limit."""

    prompt_ids: torch.Tensor
    """``(B, P)`` left-padded prompt tokens."""
    prompt_mask: torch.Tensor
    """``(B, P)`` 1 on prompt tokens."""
    response_ids: torch.Tensor
    """``(B, T)`` generated tokens (the actions), PAD after the end."""
    rewards: torch.Tensor
    """``(B, T)`` environment rewards (the score on the last token)."""
    terminated: torch.Tensor
    """``(B, T)`` bool, True on the EOS token."""
    truncated: torch.Tensor
    """``(B, T)`` bool, True on the last token of a response cut at the limit."""
    mask: torch.Tensor
    """``(B, T)`` float, 1 on generated tokens."""
    reference_log_probs: torch.Tensor
    """``(B, T)`` log pi_ref of each token (NaN when the env had no reference model)."""
    group: torch.Tensor
    """``(B,)`` int64 id of each row's start state (the env's prompt fingerprint): rows
    with equal ids are samples from one prompt."""


_FIELDS = {
    "prompt_ids": np.int64,
    "prompt_mask": np.int8,
    "response_ids": np.int64,
    "response_mask": np.int8,
    "log_probs": np.float32,
    "reference_log_probs": np.float32,
    "values": np.float32,
    "rewards": np.float32,
    "terminated": np.bool_,
    "truncated": np.bool_,
    "group": np.int64,
}
_PROMPT_FIELDS = ("prompt_ids", "prompt_mask")
_ROW_FIELDS = ("group",)


class EpisodeBuffer:
    """Up to ``capacity`` text episodes with ``P`` prompt and ``T`` response slots each."""

    def __init__(
        self, capacity: int, max_prompt_tokens: int, max_new_tokens: int, pad_token_id: int
    ) -> None:
        self.capacity = capacity
        self.max_prompt_tokens = max_prompt_tokens
        self.max_new_tokens = max_new_tokens
        self.pad_token_id = pad_token_id
        columns = {name: (max_prompt_tokens,) for name in _PROMPT_FIELDS}
        columns.update({name: () for name in _ROW_FIELDS})
        self._data = {
            name: np.zeros((capacity, *columns.get(name, (max_new_tokens,))), dtype=dtype)
            for name, dtype in _FIELDS.items()
        }
        self.num_episodes = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored episodes."""
        return sum(array[: self.num_episodes].nbytes for array in self._data.values())

    def __len__(self) -> int:
        """Stored transitions (generated tokens), Tianshou's meaning of a buffer's length."""
        return int(self._data["response_mask"][: self.num_episodes].sum())

    def add_episodes(self, **rows: np.ndarray) -> None:
        """Append ``(E, P)`` / ``(E, T)`` / ``(E,)`` arrays for every field of ``_FIELDS``."""
        missing = set(_FIELDS) - set(rows)
        if missing:
            raise ValueError(f"add_episodes is missing fields {sorted(missing)}")
        count = len(rows["prompt_ids"])
        if self.num_episodes + count > self.capacity:
            raise ValueError(
                f"EpisodeBuffer holds {self.num_episodes} of {self.capacity} episodes and "
                f"cannot take {count} more; build it larger or reset it after each update"
            )
        end = self.num_episodes + count
        for name, array in rows.items():
            self._data[name][self.num_episodes : end] = array
        self.num_episodes = end

    def episodes(self) -> dict[str, np.ndarray]:
        """Views of the stored episodes' arrays."""
        return {name: array[: self.num_episodes] for name, array in self._data.items()}

    def reset(self, keep_statistics: bool = False) -> None:
        self.num_episodes = 0

    def hasnull(self) -> bool:
        stored = self.episodes()
        return bool(np.isnan(stored["log_probs"]).any() or np.isnan(stored["rewards"]).any())

    def sample(self, batch_size: int | None) -> tuple[Batch, np.ndarray]:
        """All episodes (on-policy use); ``batch_size`` must be 0."""
        if batch_size != 0:
            raise ValueError("EpisodeBuffer serves on-policy updates only: sample(0)")
        return Batch(self.episodes()), np.arange(self.num_episodes)

    def token_segments(self, device: torch.device | str) -> TokenSegments:
        stored = {
            name: torch.as_tensor(array, device=device) for name, array in self.episodes().items()
        }
        mask = stored["response_mask"].float()
        return TokenSegments(
            prompt_ids=stored["prompt_ids"],
            prompt_mask=stored["prompt_mask"].long(),
            response_ids=stored["response_ids"],
            rewards=stored["rewards"],
            terminated=stored["terminated"],
            truncated=stored["truncated"],
            mask=mask,
            reference_log_probs=stored["reference_log_probs"],
            group=stored["group"],
        )
