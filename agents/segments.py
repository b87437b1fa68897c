"""Trajectory segments: experience laid out as ``[batch, time]`` rows.

A row is one environment's consecutive steps (classic control: it may hold
several episodes) or one episode (a text response). PPO computes advantages
and evaluates the policy on whole rows, so a sequence policy (a causal LM)
scores a row in one forward pass instead of one forward per step.

``segments_from_buffer`` recovers the rows from any Tianshou buffer: a
``SegmentBuffer`` knows its rows, a ``VectorReplayBuffer`` has one row per
environment, a plain ``ReplayBuffer`` is one row, and an ``EpisodeBuffer`` of
text episodes gives ``TokenSegments`` (prompt and response tokens once per
row, never a per-step copy of the growing prefix).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tianshou.data import Batch, ReplayBuffer, ReplayBufferManager

from agents.episode_buffer import EpisodeBuffer
from agents.row_batch import RowBatch
from agents.segment_buffer import SegmentBuffer


@dataclass(frozen=True)
class Segments(RowBatch):
    """Padded rows of transitions; every tensor starts with ``(B, T)``."""

    observations: torch.Tensor
    """``s_t``, ``(B, T, *obs_shape)``."""
    next_observations: torch.Tensor
    """``s'_t``, the observation step ``t`` produced (the final one when the episode ended)."""
    actions: torch.Tensor
    """``a_t`` as the policy emitted it (before any action scaling), ``(B, T, *act_shape)``."""
    rewards: torch.Tensor
    """``r_t``, ``(B, T)`` float."""
    terminated: torch.Tensor
    """``(B, T)`` bool: the episode reached a terminal state at ``t`` (no bootstrap)."""
    truncated: torch.Tensor
    """``(B, T)`` bool: the episode was cut at ``t`` (bootstrap from ``V(s'_t)``)."""
    mask: torch.Tensor
    """``(B, T)`` float, 1 on real steps and 0 on padding."""
    reference_log_probs: torch.Tensor | None = None
    """Log-probs of the actions under a reference policy, when the env reports them."""


def buffer_rows(buffer: ReplayBuffer) -> list[np.ndarray]:
    """Buffer indices of each row, each in time order."""
    if isinstance(buffer, SegmentBuffer):
        return buffer.row_indices()
    if isinstance(buffer, ReplayBufferManager):
        edges = buffer.subbuffer_edges
        return [
            edges[i] + sub_buffer.sample_indices(0)
            for i, sub_buffer in enumerate(buffer.buffers)
            if len(sub_buffer) > 0
        ]
    return [buffer.sample_indices(0)]


def segments_from_buffer(
    batch: Batch,
    buffer: ReplayBuffer | EpisodeBuffer,
    indices: np.ndarray,
    device: torch.device | str,
) -> RowBatch:
    """Lay the sampled ``batch`` (``batch[i]`` is ``buffer[indices[i]]``) out as rows.

    Every index of every row must be in ``indices`` (on-policy use: the whole
    buffer was sampled).
    """
    if isinstance(buffer, EpisodeBuffer):
        return buffer.token_segments(device)
    rows = buffer_rows(buffer)
    position_of_index = np.full(buffer.maxsize, -1, dtype=np.int64)
    position_of_index[indices] = np.arange(len(indices))
    row_length = max(len(row) for row in rows)
    gather = np.zeros((len(rows), row_length), dtype=np.int64)  # (B, T) positions in batch
    mask = np.zeros((len(rows), row_length), dtype=np.float32)
    for row_number, row in enumerate(rows):
        positions = position_of_index[row]
        if (positions < 0).any():
            raise ValueError(
                "segments_from_buffer: the batch does not hold every transition of the buffer; "
                "on-policy updates must sample the whole buffer (sample_size=0)"
            )
        gather[row_number, : len(row)] = positions
        mask[row_number, : len(row)] = 1.0

    def as_rows(values: np.ndarray, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values)[gather], dtype=dtype, device=device)

    return Segments(
        observations=as_rows(batch.obs, torch.float32),
        next_observations=as_rows(batch.obs_next, torch.float32),
        actions=as_rows(batch.act),
        rewards=as_rows(batch.rew, torch.float32),
        terminated=as_rows(batch.terminated, torch.bool),
        truncated=as_rows(batch.truncated, torch.bool),
        mask=torch.as_tensor(mask, device=device),
    )
