"""Rejection-sampling fine-tuning on Tianshou's on-policy ``Algorithm`` interface.

Touvron et al. 2023, "Llama 2: Open Foundation and Fine-Tuned Chat Models",
arXiv:2307.09288, section 3.2.3. Each round the collector draws K episodes from
each start state; the algorithm scores each episode by its return, keeps the best
one per start state (if it reaches ``min_return``), and fine-tunes the policy to
maximise the likelihood of the kept episodes' actions:

    loss = - sum_{kept rows, steps t} log pi(a_t | s_t) / (number of kept steps)

On text that is the prompt-masked LM loss on the best responses (Llama 2's
rejection-sampling fine-tuning); on CartPole it is behaviour cloning of the best
episodes, a cross-entropy-method loop. With ``keep_best_of_all_rounds`` the kept
set accumulates: for each start state ever seen, the best episode of any round
so far is kept and trained on (the paper's fix for the regression of RLHF-V3).

How the K samples of a start state reach the algorithm: the collector lays them
out as K contiguous rows, one episode per row.

- Text: ``TextGenerationVectorEnv(samples_per_prompt=K)`` repeats each prompt in K
  rows and records the prompt's fingerprint as the rows' ``group``; the KV cache
  of the prompt is computed once for the K rows.
- Classic control: ``envs.shared_start.SharedStartVectorEnv`` resets each group of K
  copies of a ``SyncVectorEnv`` with one seed (Gymnasium's ``CartPoleVectorEnv``
  cannot seed copies one by one), and ``VectorEnvCollector.collect(n_episode=num_envs)``
  records one episode per copy. The start state is the first observation (CartPole
  is fully observed).

A start state's identity (for the kept set across rounds) is the rows' ``group``
when they carry one, else their first observation.

Under torchrun each rank samples its own start states (its shard of the prompts) and
keeps its own best episodes, so kept sets differ in size across ranks. With
``reduce_sum=textrl.distributed.all_reduce_sum`` the round's tallies are sums over all
ranks, every rank takes the same number of fine-tuning steps (fixed by the global kept
count; a rank with fewer rows takes smaller, possibly empty, minibatches), and each
step's loss is the likelihood per kept step over all ranks' minibatches, so every rank
takes the same step. Gradients are averaged over ranks, as FSDP's reduce-scatter does for
the parameters it shards (``textrl ppo --fsdp``, ``textrl rs --fsdp``), so each rank weights
its loss by the number of ranks; the others' (all of them without FSDP) are averaged in one
all-reduce. Each step every rank runs a forward and a backward, an empty minibatch on a
zero-weight stand-in row: FSDP's all-gathers and reduce-scatters are collectives.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from tianshou.algorithm.algorithm_base import OnPolicyAlgorithm, Policy, TrainingStats
from tianshou.algorithm.optim import OptimizerFactory
from tianshou.data import Batch, ReplayBuffer

from agents.row_batch import RowBatch
from agents.segments import Segments, segments_from_buffer
from textrl.distributed import average_gradients, clip_grad_norm_
from textrl.masked import ReduceSum, masked_sum


@runtime_checkable
class LikelihoodPolicy(Protocol):
    """A policy that scores stored actions with gradients: what likelihood fine-tuning needs."""

    scores_steps_independently: bool
    """True when step t's log-prob depends on s_t alone (an MLP): steps are then shuffled
    into minibatches one by one; False for a sequence model, which sees whole rows."""

    def log_likelihoods(self, segments: RowBatch) -> torch.Tensor:
        """``log pi(a_t | s_t)`` of every stored action, ``(B, T)``, with gradients."""
        ...


def best_of_k(returns: np.ndarray, min_return: float | None = None) -> np.ndarray:
    """Index of the best of each group of K returns, or -1 when it is below ``min_return``.

    ``returns (G, K)`` -> ``(G,)`` int. Ties go to the first of the tied samples: the K
    samples are exchangeable, so that is a uniformly random choice among them.
    """
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 2 or returns.shape[1] == 0:
        raise ValueError(f"returns must be (groups, K) with K >= 1, got shape {returns.shape}")
    best = returns.argmax(1)
    if min_return is not None:
        best[returns[np.arange(len(returns)), best] < min_return] = -1
    return best


@dataclass(frozen=True)
class KeptEpisode:
    """The best episode kept for one start state."""

    start_state: bytes
    """Identity of the start state (the rows' ``group``, or the first observation)."""
    episode_return: float
    """Its undiscounted return (on text, the reward of the response)."""
    episode: RowBatch
    """The episode as a one-row batch (on text, ``TokenSegments`` with prompt and response)."""
    round: int
    """The update (round) whose samples it came from."""


def keep_best(
    kept: Mapping[bytes, KeptEpisode], candidates: Iterable[KeptEpisode]
) -> dict[bytes, KeptEpisode]:
    """``kept`` updated with ``candidates``: a candidate replaces the kept episode of its
    start state only when its return is strictly higher (ties keep the earlier one)."""
    merged = dict(kept)
    for candidate in candidates:
        current = merged.get(candidate.start_state)
        if current is None or candidate.episode_return > current.episode_return:
            merged[candidate.start_state] = candidate
    return merged


def start_state_keys(rows: RowBatch) -> list[bytes]:
    """Identity of each row's start state: its ``group`` when the rows carry one (text:
    the prompt's fingerprint), else its first observation (classic control)."""
    starts = getattr(rows, "group", None)
    if starts is None:
        if not isinstance(rows, Segments):
            raise TypeError(f"{type(rows).__name__} rows carry neither a group nor observations")
        starts = rows.observations[:, 0]
    return [start.tobytes() for start in starts.cpu().numpy()]


def concatenate_rows(batches: Sequence[RowBatch]) -> RowBatch:
    """One batch of all rows; time dimensions are right-padded with zeros (mask 0) to the
    longest. The batches must be of one type and share their non-time dimensions."""
    first = batches[0]
    assert dataclasses.is_dataclass(first)
    fields = {}
    for field in dataclasses.fields(first):
        values = [getattr(batch, field.name) for batch in batches]
        if values[0] is None:
            fields[field.name] = None
            continue
        if values[0].dim() > 1:
            length = max(value.shape[1] for value in values)
            values = [
                F.pad(value, (0, 0) * (value.dim() - 2) + (0, length - value.shape[1]))
                for value in values
            ]
        fields[field.name] = torch.cat(values)
    return type(first)(**fields)


@dataclass(frozen=True)
class SelectedEpisodes:
    """What one round's selection hands the fine-tuning: the rows to train on and tallies
    (over all processes when the algorithm reduces over a torchrun job)."""

    training_rows: RowBatch | None
    """This process's kept set as one batch (None when it keeps nothing yet)."""
    stand_in_row: RowBatch
    """One sampled episode, back-propagated at weight 0 in a step that leaves this process
    no kept rows, so that every process runs each step's forward and backward."""
    sampled_mean_return: float
    """Mean return of the round's episodes."""
    best_of_k_mean_return: float
    """Mean over the round's start states of the best return among their K samples."""
    rejected_count: int
    """Start states of the round whose best return was below ``min_return``."""
    newly_kept_count: int
    """Start states whose kept episode now comes from this round (new or better)."""
    kept_count: int
    """Episodes in the kept set (one per start state)."""
    kept_mean_return: float
    """Mean return of the kept set (NaN when it is empty)."""


@dataclass(kw_only=True)
class RejectionSamplingTrainingStats(TrainingStats):
    """One round: selection tallies and the fine-tuning loss (logged to TensorBoard)."""

    loss: float
    """Mean over minibatches of the negative log-likelihood per kept step (NaN if none)."""
    sampled_mean_return: float
    best_of_k_mean_return: float
    kept_count: int
    """Episodes trained on (one per start state in the kept set)."""
    kept_mean_return: float
    newly_kept_count: int
    rejected_count: int
    gradient_steps: int
    learning_rate: float


class RejectionSampling(OnPolicyAlgorithm[Policy]):
    """Best-of-K rejection sampling, then likelihood fine-tuning on the kept episodes.

    Llama 2, arXiv:2307.09288, section 3.2.3. Learns from Tianshou's ``OnPolicyTrainer``
    (whole buffer per update): each update is one round. The trainer's ``batch_size``
    counts steps per minibatch (rounded up to whole rows for a sequence policy) and its
    ``update_step_num_repetitions`` is the number of epochs over the kept set. The
    sampling temperature is the policy's (``policy.sampling`` on text), re-tuned per
    round by the caller.
    """

    def __init__(
        self,
        *,
        policy: Policy,
        optim: OptimizerFactory,
        samples_per_start: int,
        min_return: float | None = None,
        keep_best_of_all_rounds: bool = False,
        max_grad_norm: float | None = 1.0,
        reduce_sum: ReduceSum | None = None,
    ) -> None:
        """
        :param policy: a Tianshou policy that also implements ``LikelihoodPolicy``.
        :param optim: Tianshou optimizer factory for all of the policy's parameters.
        :param samples_per_start: K, the episodes per start state in each round (contiguous rows).
        :param min_return: episodes with a lower return are never kept, or None.
        :param keep_best_of_all_rounds: keep, per start state, the best episode of every round
            so far and train on all of them (Llama 2 from RLHF-V3 on); else only this round's.
        :param max_grad_norm: global gradient-norm clip, or None.
        :param reduce_sum: sums a tensor over the processes of a torchrun job, each with its
            own start states (``textrl.distributed.all_reduce_sum``); None for one process.
        """
        super().__init__(policy=policy)
        if not isinstance(policy, LikelihoodPolicy):
            raise TypeError(
                f"RejectionSampling needs a policy that scores stored actions "
                f"(log_likelihoods); {type(policy).__name__} does not. "
                "See agents.MLPActorCriticPolicy or agents.lm_policy.LMActorCriticPolicy."
            )
        if samples_per_start < 1:
            raise ValueError(f"samples_per_start must be >= 1, got {samples_per_start}")
        self._torch_optimizer, lr_scheduler = optim.create_instances(policy)
        if lr_scheduler is not None:
            self.lr_schedulers.append(lr_scheduler)
        self.optim = self.Optimizer(self._torch_optimizer, policy, max_grad_norm=max_grad_norm)
        self._optimizers.append(self.optim)
        self.samples_per_start = samples_per_start
        self.min_return = min_return
        self.keep_best_of_all_rounds = keep_best_of_all_rounds
        self.max_grad_norm = max_grad_norm
        self.reduce_sum = reduce_sum
        self._kept: dict[bytes, KeptEpisode] = {}
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    @property
    def kept_episodes(self) -> list[KeptEpisode]:
        """The kept set: one best episode per start state, in the order first kept."""
        return list(self._kept.values())

    def restore_kept_episodes(
        self, episodes: Iterable[KeptEpisode], *, rounds_done: int | None = None
    ) -> None:
        """Start from an earlier kept set (e.g. a saved ``kept_episodes``), so that a new
        round (a new model, a new algorithm) keeps the best of all rounds; ``rounds_done``
        sets the round counter that new kept episodes are stamped with."""
        self._kept = keep_best({}, episodes)
        if rounds_done is not None:
            self.num_updates.fill_(rounds_done)

    @property
    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _preprocess_batch(
        self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray
    ) -> SelectedEpisodes:
        """Score the round's episodes, pick the best of each K, merge them into the kept set."""
        rows = segments_from_buffer(batch, buffer, indices, self._device)
        returns = _episode_returns(rows)  # (B,)
        keys = start_state_keys(rows)
        groups = self._grouped(returns, keys)  # (G, K)
        best = best_of_k(groups, self.min_return)
        candidates = [
            KeptEpisode(
                start_state=keys[row],
                episode_return=float(returns[row]),
                episode=rows.select(torch.tensor([row])),
                round=int(self.num_updates),
            )
            for row in (np.flatnonzero(best >= 0) * self.samples_per_start + best[best >= 0])
        ]
        self._kept = keep_best(self._kept if self.keep_best_of_all_rounds else {}, candidates)
        kept = self.kept_episodes
        totals = self._summed(
            returns.sum(),
            len(returns),
            groups.max(1).sum(),
            len(groups),
            (best < 0).sum(),
            sum(self._kept[c.start_state] is c for c in candidates),
            sum(k.episode_return for k in kept),
            len(kept),
        )
        return_sum, episodes, best_sum, group_count, rejected, newly_kept, kept_sum, kept_count = (
            totals.tolist()
        )
        return SelectedEpisodes(
            training_rows=concatenate_rows([k.episode for k in kept]) if kept else None,
            stand_in_row=rows.select(torch.tensor([0])),
            sampled_mean_return=return_sum / episodes,
            best_of_k_mean_return=best_sum / group_count,
            rejected_count=int(rejected),
            newly_kept_count=int(newly_kept),
            kept_count=int(kept_count),
            kept_mean_return=kept_sum / kept_count if kept_count else math.nan,
        )

    def _summed(self, *values: float) -> torch.Tensor:
        """``values`` (float64) summed over the processes, or themselves in one process."""
        totals = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device)
        return totals if self.reduce_sum is None else self.reduce_sum(totals)

    def _grouped(self, returns: np.ndarray, keys: list[bytes]) -> np.ndarray:
        """``returns`` as ``(G, K)``, checking that each block of K rows shares a start state."""
        k = self.samples_per_start
        if len(returns) % k:
            raise ValueError(
                f"{len(returns)} episodes are not whole groups of samples_per_start={k}"
            )
        for first in range(0, len(keys), k):
            if len(set(keys[first : first + k])) != 1:
                raise ValueError(
                    f"rows {first}..{first + k - 1} do not share a start state; give the env "
                    f"K={k} samples per start (TextGenerationVectorEnv(samples_per_prompt={k}), "
                    f"envs.shared_start.SharedStartVectorEnv(samples_per_start={k}))"
                )
        return returns.reshape(-1, k)

    def _update_with_batch(
        self, batch: SelectedEpisodes, batch_size: int | None, repeat: int
    ) -> RejectionSamplingTrainingStats:
        losses: list[float] = []
        rows = batch.training_rows
        stand_in = batch.stand_in_row
        if self.policy.scores_steps_independently:
            rows = None if rows is None else rows.as_single_steps()
            stand_in = stand_in.as_single_steps().select(torch.tensor([0]))
        num_rows = 0 if rows is None else rows.num_rows
        capacity = 0 if rows is None or batch_size is None else batch_size / rows.mask.shape[1]
        global_rows, global_capacity = self._summed(num_rows, math.ceil(capacity)).tolist()
        if global_rows == 0:
            steps_per_epoch = 0
        elif batch_size is None:
            steps_per_epoch = 1
        else:
            steps_per_epoch = math.ceil(global_rows / global_capacity)
        for _ in range(repeat):
            for indices in torch.randperm(num_rows).tensor_split(steps_per_epoch):
                minibatch, weight = (
                    (stand_in, 0.0) if len(indices) == 0 else (rows.select(indices), 1.0)
                )
                losses.append(self._fine_tuning_step(minibatch, weight))
        self.num_updates += 1
        return RejectionSamplingTrainingStats(
            loss=float(np.mean(losses)) if losses else math.nan,
            sampled_mean_return=batch.sampled_mean_return,
            best_of_k_mean_return=batch.best_of_k_mean_return,
            kept_count=batch.kept_count,
            kept_mean_return=batch.kept_mean_return,
            newly_kept_count=batch.newly_kept_count,
            rejected_count=batch.rejected_count,
            gradient_steps=len(losses),
            learning_rate=self._torch_optimizer.param_groups[0]["lr"],
        )

    def _fine_tuning_step(self, minibatch: RowBatch, weight: float) -> float:
        """One step on every process's ``minibatch``: minimise the negative log-likelihood per
        kept step of their union; returns that loss. ``weight`` is 0 for a stand-in row.

        Each process back-propagates its own sum over the global step count times the number
        of processes, so the gradients averaged over processes (by FSDP for the parameters it
        shards, by hand for the rest) are the union's.
        """
        self._torch_optimizer.zero_grad()
        log_likelihood_sum = weight * masked_sum(
            self.policy.log_likelihoods(minibatch), minibatch.mask
        )
        global_steps, processes = self._summed(weight * minibatch.mask.sum().item(), 1).tolist()
        (-log_likelihood_sum * processes / global_steps).backward()
        global_sum = log_likelihood_sum.detach()
        if self.reduce_sum is not None:
            summed, _ = average_gradients(
                self.policy.parameters(), self.reduce_sum, global_sum.reshape(1)
            )
            global_sum = summed[0]
        if self.max_grad_norm is not None:
            clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self._torch_optimizer.step()
        return float(-global_sum / global_steps)


def _episode_returns(rows: RowBatch) -> np.ndarray:
    """Undiscounted return of each row, ``(B,)``; every row must hold exactly one episode."""
    valid = rows.mask.bool()
    ends = (rows.terminated | rows.truncated) & valid  # (B, T)
    lengths = valid.sum(1)
    last_step_ends = ends.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    whole = (ends.sum(1) == 1) & last_step_ends & (lengths > 0)
    if not bool(whole.all()):
        row = int(torch.nonzero(~whole)[0])
        raise ValueError(
            f"row {row} does not hold exactly one whole episode; rejection sampling scores "
            "whole episodes: collect with VectorEnvCollector.collect(n_episode=num_envs) or "
            "a TextCollector"
        )
    return (rows.rewards * rows.mask).sum(1).double().cpu().numpy()
