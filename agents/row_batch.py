"""The common shape of everything PPO learns from: padded ``[batch, time]`` rows."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch


class RowBatch:
    """A frozen dataclass of tensors that all start with the row dimension ``B``.

    Subclasses carry at least ``rewards``, ``terminated``, ``truncated`` and ``mask``,
    all ``(B, T)``: what GAE needs; and ``reference_log_probs`` ``(B, T)`` (or None),
    the actions' log-probs under a frozen reference policy, for a KL penalty. The rest
    (observations, tokens) is for the policy.
    """

    rewards: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    mask: torch.Tensor
    reference_log_probs: torch.Tensor | None

    @property
    def num_rows(self) -> int:
        return self.mask.shape[0]

    def select(self, rows: torch.Tensor) -> RowBatch:
        """The sub-batch of the given row indices."""
        return self._mapped(lambda value: value[rows])

    def as_single_steps(self) -> RowBatch:
        """Every valid step as its own row of length 1 (for policies that score steps alone)."""
        valid = self.mask.bool()
        return self._mapped(lambda value: value[valid].unsqueeze(1))

    def _mapped(self, transform: Callable[[torch.Tensor], torch.Tensor]) -> RowBatch:
        assert dataclasses.is_dataclass(self)
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return type(self)(
            **{name: None if value is None else transform(value) for name, value in fields.items()}
        )
