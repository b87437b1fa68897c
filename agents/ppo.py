"""PPO written once, on Tianshou's on-policy ``Algorithm`` interface.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347.
The algorithm learns from trajectory segments (``agents.segments``): the
policy scores whole ``[batch, time]`` rows in one call, so the same class trains
an MLP on CartPole and a causal LM on text. The math (GAE, losses, whitening)
lives in ``textrl``; this module only orchestrates it.

Under torchrun every rank collects its own rollouts and runs this algorithm with
``reduce_sum=textrl.distributed.all_reduce_sum``: reward whitening, advantage
whitening and the adaptive KL controller's measured KL then use the statistics
of all ranks' rollouts together, and each gradient step averages the ranks'
gradients (as DDP would) in one all-reduce, so every rank takes the same step.
When the policy's LM is sharded by FSDP, FSDP averages its gradients itself and the
all-reduce carries only the rest (the value head).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
from tianshou.algorithm.algorithm_base import OnPolicyAlgorithm, Policy, TrainingStats
from tianshou.algorithm.optim import OptimizerFactory
from tianshou.data import Batch, ReplayBuffer

from agents.row_batch import RowBatch
from agents.segment_policy import ReferenceScoringPolicy, SegmentPolicy
from agents.segments import segments_from_buffer
from textrl.distributed import average_gradients, clip_grad_norm_
from textrl.gae import masked_gae
from textrl.kl import AdaptiveKLController, KLEstimator
from textrl.masked import ReduceSum, masked_mean, masked_whiten
from textrl.ppo_losses import clipped_surrogate_loss, clipped_value_loss, explained_variance
from textrl.reward_shaping import kl_shaped_rewards

_PER_STEP_FIELDS = ("old_log_probs", "old_values", "advantages", "returns")


@dataclass(frozen=True)
class PPORollout:
    """Segments plus what the update needs from the policy that collected them."""

    segments: RowBatch
    old_log_probs: torch.Tensor
    """``log pi_old(a_t | s_t)``, ``(B, T)``."""
    old_values: torch.Tensor
    """``V_old(s_t)``, ``(B, T)``."""
    advantages: torch.Tensor
    """GAE advantages ``A_t``, ``(B, T)``."""
    returns: torch.Tensor
    """Value targets ``A_t + V_old(s_t)``, ``(B, T)``."""
    kl_coef: float = 0.0
    """The KL coefficient beta the rewards were shaped with."""
    mean_sequence_kl: float | None = None
    """Mean over rows of the summed per-token KL to the reference, when measured."""

    def as_single_steps(self) -> PPORollout:
        valid = self.segments.mask.bool()
        return dataclasses.replace(
            self,
            segments=self.segments.as_single_steps(),
            **{name: getattr(self, name)[valid].unsqueeze(1) for name in _PER_STEP_FIELDS},
        )

    def select(self, rows: torch.Tensor) -> PPORollout:
        return dataclasses.replace(
            self,
            segments=self.segments.select(rows),
            **{name: getattr(self, name)[rows] for name in _PER_STEP_FIELDS},
        )


@dataclass(kw_only=True)
class PPOTrainingStats(TrainingStats):
    """Means over the update's minibatches (logged to TensorBoard by Tianshou's trainer)."""

    loss: float
    policy_loss: float
    value_loss: float
    entropy: float
    approx_kl: float
    clip_fraction: float
    explained_variance: float
    learning_rate: float
    clip_epsilon: float
    gradient_steps: int
    epochs_completed: int
    kl_coef: float
    """The KL coefficient beta of this update's reward shaping (0 without a penalty)."""
    sequence_kl: float | None
    """Mean KL to the reference per row (per response), when measured."""


class PPO(OnPolicyAlgorithm[Policy]):
    """Proximal Policy Optimization on trajectory segments. arXiv:1707.06347.

    Learns from Tianshou's ``OnPolicyTrainer`` (whole buffer per update). The
    trainer's ``batch_size`` counts transitions per minibatch (rounded up to whole
    segments for a sequence policy); its ``update_step_num_repetitions`` is the
    number of epochs over the rollout.
    """

    def __init__(
        self,
        *,
        policy: Policy,
        optim: OptimizerFactory,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_epsilon: float = 0.2,
        dual_clip: float | None = None,
        value_clip_epsilon: float | None = None,
        value_coef: float = 0.5,
        entropy_coef: float = 0.0,
        max_grad_norm: float | None = 0.5,
        normalize_advantages: bool = True,
        target_kl: float | None = None,
        annealing_updates: int | None = None,
        kl_coef: float = 0.0,
        kl_estimator: KLEstimator = "k1",
        adaptive_kl: AdaptiveKLController | None = None,
        whiten_rewards: bool = False,
        gradient_accumulation_steps: int = 1,
        reduce_sum: ReduceSum | None = None,
    ) -> None:
        """
        :param policy: a Tianshou policy that also implements ``SegmentPolicy``.
        :param optim: Tianshou optimizer factory for all of the policy's parameters.
        :param gamma: discount factor.
        :param gae_lambda: GAE's lambda (bias/variance of the advantage).
        :param clip_epsilon: the ratio clip range epsilon.
        :param dual_clip: dual-clip constant c > 1 (arXiv:1912.09729), or None.
        :param value_clip_epsilon: clip range of the value update, or None for plain MSE.
        :param value_coef: weight of the value loss.
        :param entropy_coef: weight of the entropy bonus.
        :param max_grad_norm: global gradient-norm clip, or None.
        :param normalize_advantages: whiten advantages per minibatch (masked statistics).
        :param target_kl: stop the update's epochs once a minibatch's approx KL exceeds it.
        :param annealing_updates: linearly anneal learning rate and clip range to 0 over this
            many updates (CleanRL's ``anneal_lr``, rl-zoo's ``lin_`` schedules), or None.
        :param kl_coef: beta of the per-token penalty ``-beta * KL(pi || pi_ref)`` on the
            rewards (RLHF; Llama 2 uses 0.01); needs reference log-probs from the env.
        :param kl_estimator: ``k1`` (default) or ``k3`` for the per-token KL.
        :param adaptive_kl: a controller that owns beta and steers the KL to a target
            (replaces ``kl_coef``).
        :param whiten_rewards: scale the shaped per-token rewards to unit variance (masked,
            mean kept) before GAE.
        :param gradient_accumulation_steps: split each minibatch into this many micro-batches
            whose gradients add up to the minibatch's (token-weighted, so the step equals one
            pass over the whole minibatch); bounds activation memory for long sequences.
        :param reduce_sum: sums a tensor over the processes that each collected an equal
            number of rows (``textrl.distributed.all_reduce_sum``); None for one process.
        """
        super().__init__(policy=policy)
        if not isinstance(policy, SegmentPolicy):
            raise TypeError(
                f"PPO needs a policy that scores whole segments (evaluate_segments, "
                f"bootstrap_values); {type(policy).__name__} does not. "
                "See agents.MLPActorCriticPolicy."
            )
        if annealing_updates is not None and annealing_updates <= 0:
            raise ValueError(f"annealing_updates must be positive, got {annealing_updates}")
        self._torch_optimizer, lr_scheduler = optim.create_instances(policy)
        if lr_scheduler is not None:
            if annealing_updates is not None:
                raise ValueError(
                    "give either annealing_updates or an lr scheduler factory, not both"
                )
            self.lr_schedulers.append(lr_scheduler)
        if gradient_accumulation_steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be >= 1, got {gradient_accumulation_steps}"
            )
        self.optim = self.Optimizer(self._torch_optimizer, policy, max_grad_norm=max_grad_norm)
        self._optimizers.append(self.optim)
        self.max_grad_norm = max_grad_norm
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.gamma = gamma
        self.gae_lambda = gae_lambda
        self.clip_epsilon = clip_epsilon
        self.dual_clip = dual_clip
        self.value_clip_epsilon = value_clip_epsilon
        self.value_coef = value_coef
        self.entropy_coef = entropy_coef
        self.normalize_advantages = normalize_advantages
        self.target_kl = target_kl
        self.annealing_updates = annealing_updates
        self.kl_coef = kl_coef
        self.kl_estimator = kl_estimator
        self.adaptive_kl = adaptive_kl
        self.whiten_rewards = whiten_rewards
        self.reduce_sum = reduce_sum
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        self._initial_learning_rates = [group["lr"] for group in self._torch_optimizer.param_groups]

    @property
    def torch_optimizer(self) -> torch.optim.Optimizer:
        """The AdamW (or other) instance the policy's parameters step with, for checkpoints."""
        return self._torch_optimizer

    @property
    def _device(self) -> torch.device:
        return next(self.policy.parameters()).device

    def _annealing_fraction(self) -> float:
        if self.annealing_updates is None:
            return 1.0
        return max(0.0, 1.0 - self.num_updates.item() / self.annealing_updates)

    def _preprocess_batch(
        self, batch: Batch, buffer: ReplayBuffer, indices: np.ndarray
    ) -> PPORollout:
        """Rows, old log-probs and values (one no-grad pass), then masked GAE."""
        segments = segments_from_buffer(batch, buffer, indices, self._device)
        with torch.no_grad():
            evaluation = self.policy.evaluate_segments(segments)
            next_values = (
                evaluation.next_values
                if evaluation.next_values is not None
                else self.policy.bootstrap_values(segments)
            )
            reference_log_probs = self._reference_log_probs(segments)
        rewards, kl_coef, sequence_kl = self._shaped_rewards(
            segments, evaluation.log_probs, reference_log_probs
        )
        advantages, returns = masked_gae(
            rewards,
            evaluation.values,
            next_values,
            segments.terminated,
            segments.truncated,
            segments.mask,
            self.gamma,
            self.gae_lambda,
        )
        return PPORollout(
            segments=segments,
            old_log_probs=evaluation.log_probs,
            old_values=evaluation.values,
            advantages=advantages,
            returns=returns,
            kl_coef=kl_coef,
            mean_sequence_kl=sequence_kl,
        )

    @property
    def _penalises_kl(self) -> bool:
        return self.kl_coef > 0 or self.adaptive_kl is not None

    def _reference_log_probs(self, segments: RowBatch) -> torch.Tensor | None:
        """``log pi_ref`` of the actions: from the env when it stored them, else one no-grad
        pass of the policy's reference (``ReferenceScoringPolicy``), else None."""
        reference = segments.reference_log_probs
        if reference is not None and not torch.isnan(reference[segments.mask.bool()]).any():
            return reference
        if self._penalises_kl and isinstance(self.policy, ReferenceScoringPolicy):
            return self.policy.reference_log_probs(segments)
        return None

    def _shaped_rewards(
        self, segments: RowBatch, log_probs: torch.Tensor, reference: torch.Tensor | None
    ) -> tuple[torch.Tensor, float, float | None]:
        """Rewards after the KL penalty and optional whitening; beta; mean sequence KL."""
        rewards = segments.rewards
        kl_coef = self.adaptive_kl.value if self.adaptive_kl is not None else self.kl_coef
        sequence_kl = None
        if self._penalises_kl:
            if reference is None:
                raise ValueError(
                    "a KL penalty needs the actions' reference log-probs: give the text "
                    "environment or the policy a reference_model"
                )
            rewards, per_token_kl = kl_shaped_rewards(
                rewards, log_probs, reference, segments.mask, kl_coef, self.kl_estimator
            )
            sequence_kls = per_token_kl.sum(1)  # (B,)
            sequence_kl = masked_mean(
                sequence_kls, torch.ones_like(sequence_kls), self.reduce_sum
            ).item()
            if self.adaptive_kl is not None:
                self.adaptive_kl.update(sequence_kl, self._rows_of_all_processes(segments))
        if self.whiten_rewards:
            rewards = masked_whiten(
                rewards, segments.mask, shift_mean=False, reduce_sum=self.reduce_sum
            )
        return rewards, kl_coef, sequence_kl

    def _rows_of_all_processes(self, segments: RowBatch) -> int:
        rows = torch.tensor(segments.num_rows, device=segments.mask.device)
        return int(rows if self.reduce_sum is None else self.reduce_sum(rows))

    def _update_with_batch(
        self, batch: PPORollout, batch_size: int | None, repeat: int
    ) -> PPOTrainingStats:
        fraction = self._annealing_fraction()
        clip_epsilon = self.clip_epsilon * fraction
        for group, initial in zip(
            self._torch_optimizer.param_groups, self._initial_learning_rates, strict=True
        ):
            group["lr"] = initial * fraction
        if self.policy.scores_steps_independently:
            batch = batch.as_single_steps()
        num_rows, row_length = batch.segments.mask.shape
        rows_per_minibatch = num_rows if batch_size is None else math.ceil(batch_size / row_length)
        metrics: list[dict[str, torch.Tensor]] = []
        epochs_completed = 0
        stop = False
        for _ in range(repeat):
            for rows in torch.randperm(num_rows).split(rows_per_minibatch):
                step_metrics = self._average_over_processes(
                    self._accumulate_gradients(batch.select(rows), clip_epsilon)
                )
                if self.target_kl is not None and step_metrics["policy/approxkl"] > self.target_kl:
                    self._torch_optimizer.zero_grad()
                    stop = True
                    break
                if self.max_grad_norm is not None:
                    clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self._torch_optimizer.step()
                metrics.append(step_metrics)
            if stop:
                break
            epochs_completed += 1
        self.num_updates += 1
        rollout_explained_variance = explained_variance(
            batch.old_values, batch.returns, batch.segments.mask
        ).item()
        return self._training_stats(
            metrics, fraction, clip_epsilon, epochs_completed, rollout_explained_variance, batch
        )

    def _average_over_processes(self, metrics: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Gradients and minibatch metrics averaged over processes, in one all-reduce: every
        rank then takes the same step and the same ``target_kl`` decision. FSDP has averaged
        the gradients of the parameters it shards in backward already."""
        if self.reduce_sum is None:
            return metrics
        summed, processes = average_gradients(
            self.policy.parameters(), self.reduce_sum, torch.stack(list(metrics.values()))
        )
        return dict(zip(metrics, summed / processes, strict=True))

    def _accumulate_gradients(
        self, minibatch: PPORollout, clip_epsilon: float
    ) -> dict[str, torch.Tensor]:
        """Gradients of the minibatch loss, summed over micro-batches; its metrics.

        Each micro-batch's masked means are weighted by its share of the minibatch's
        steps, so the summed gradient and metrics equal one pass over the minibatch.
        Advantages are whitened with the whole minibatch's statistics first.
        """
        self._torch_optimizer.zero_grad()
        advantages = (
            masked_whiten(minibatch.advantages, minibatch.segments.mask, reduce_sum=self.reduce_sum)
            if self.normalize_advantages
            else minibatch.advantages
        )
        minibatch = dataclasses.replace(minibatch, advantages=advantages)
        if self.gradient_accumulation_steps == 1:
            loss, metrics = self._loss(minibatch, clip_epsilon)
            loss.backward()
            return metrics
        total_steps = minibatch.segments.mask.sum()
        num_rows = minibatch.segments.mask.shape[0]
        micro_rows = math.ceil(num_rows / self.gradient_accumulation_steps)
        summed: dict[str, torch.Tensor] = {}
        for rows in torch.arange(num_rows).split(micro_rows):
            micro = minibatch.select(rows)
            weight = micro.segments.mask.sum() / total_steps
            loss, micro_metrics = self._loss(micro, clip_epsilon)
            (loss * weight).backward()
            for key, value in micro_metrics.items():
                summed[key] = summed.get(key, 0.0) + value * weight
        return summed

    def _loss(
        self, minibatch: PPORollout, clip_epsilon: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Clipped surrogate + value loss - entropy bonus over one (micro-)batch."""
        mask = minibatch.segments.mask
        evaluation = self.policy.evaluate_segments(minibatch.segments)
        policy_loss, policy_metrics = clipped_surrogate_loss(
            evaluation.log_probs,
            minibatch.old_log_probs,
            minibatch.advantages,
            mask,
            clip_epsilon,
            self.dual_clip,
        )
        value_loss, value_metrics = clipped_value_loss(
            evaluation.values,
            minibatch.old_values,
            minibatch.returns,
            mask,
            self.value_clip_epsilon,
        )
        entropy = masked_mean(evaluation.entropy, mask)
        loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy
        return loss, {
            **policy_metrics,
            **value_metrics,
            "loss": loss.detach(),
            "policy/entropy": entropy.detach(),
        }

    def _training_stats(
        self,
        metrics: list[dict[str, torch.Tensor]],
        fraction: float,
        clip_epsilon: float,
        epochs_completed: int,
        rollout_explained_variance: float,
        rollout: PPORollout,
    ) -> PPOTrainingStats:
        if metrics:
            means = {
                key: torch.stack([m[key] for m in metrics]).mean().item() for key in metrics[0]
            }
        else:  # the first minibatch already exceeded target_kl
            means = {
                key: float("nan")
                for key in (
                    "loss",
                    "policy/loss",
                    "value/loss",
                    "policy/entropy",
                    "policy/approxkl",
                    "policy/clipfrac",
                )
            }
        return PPOTrainingStats(
            loss=means["loss"],
            policy_loss=means["policy/loss"],
            value_loss=means["value/loss"],
            entropy=means["policy/entropy"],
            approx_kl=means["policy/approxkl"],
            clip_fraction=means["policy/clipfrac"],
            explained_variance=rollout_explained_variance,
            learning_rate=self._initial_learning_rates[0] * fraction,
            clip_epsilon=clip_epsilon,
            gradient_steps=len(metrics),
            epochs_completed=epochs_completed,
            kl_coef=rollout.kl_coef,
            sequence_kl=rollout.mean_sequence_kl,
        )
