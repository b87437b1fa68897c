"""MLP actor-critic for vector observations, discrete or continuous (Box) actions.

The CleanRL / SB3 architecture: tanh MLPs, orthogonal initialisation (gain
sqrt(2) in the torso, 0.01 on the policy head so the first policy is near
uniform, 1 on the value head), a state-independent log-std for Gaussian
actions. Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients",
arXiv:2005.12729, on why the initialisation matters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import gymnasium as gym
import torch
from tianshou.algorithm.algorithm_base import Policy
from tianshou.data import Batch
from torch import nn

from agents.segment_policy import SegmentEvaluation
from agents.segments import Segments
from textrl.distributions import (
    categorical_log_probs_and_entropy,
    diagonal_gaussian_log_probs_and_entropy,
    sample_categorical,
    sample_diagonal_gaussian,
)


def _orthogonal_linear(in_features: int, out_features: int, gain: float) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp_torso(in_features: int, hidden_sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [_orthogonal_linear(in_features, width, math.sqrt(2.0)), nn.Tanh()]
        in_features = width
    return nn.Sequential(*layers)


class MLPActorCritic(nn.Module):
    """The networks: torso(s) plus a policy head and a value head."""

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        hidden_sizes: Sequence[int] = (64, 64),
        shared_torso: bool = False,
    ) -> None:
        super().__init__()
        feature_dim = hidden_sizes[-1] if hidden_sizes else observation_dim
        self.actor_torso = _mlp_torso(observation_dim, hidden_sizes)
        self.critic_torso = (
            self.actor_torso if shared_torso else _mlp_torso(observation_dim, hidden_sizes)
        )
        self.shared_torso = shared_torso
        self.policy_head = _orthogonal_linear(feature_dim, action_dim, 0.01)
        self.value_head = _orthogonal_linear(feature_dim, 1, 1.0)

    def policy_output(self, observations: torch.Tensor) -> torch.Tensor:
        """Logits (discrete) or Gaussian means (continuous), ``(..., action_dim)``."""
        return self.policy_head(self.actor_torso(observations))

    def value(self, observations: torch.Tensor) -> torch.Tensor:
        """``V(s)``, ``(...)``."""
        return self.value_head(self.critic_torso(observations)).squeeze(-1)

    def policy_output_and_value(
        self, observations: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.shared_torso:
            features = self.actor_torso(observations)
            return self.policy_head(features), self.value_head(features).squeeze(-1)
        return self.policy_output(observations), self.value(observations)


class MLPActorCriticPolicy(Policy):
    """A Tianshou ``Policy`` over an ``MLPActorCritic`` that also scores whole segments.

    Discrete spaces get a categorical head; ``Box`` spaces a diagonal Gaussian
    whose samples are clipped to [-1, 1] and scaled to the space's bounds when
    sent to the environment (Tianshou's ``map_action``); the unclipped sample
    is what is stored and scored.
    """

    def __init__(
        self,
        *,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Discrete | gym.spaces.Box,
        hidden_sizes: Sequence[int] = (64, 64),
        shared_torso: bool = False,
        initial_log_std: float = 0.0,
        deterministic_eval: bool = True,
    ) -> None:
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(
                "MLPActorCriticPolicy needs a flat Box observation space, got "
                f"{observation_space}; "
                "flatten the observations with gymnasium.wrappers.FlattenObservation"
            )
        is_discrete = isinstance(action_space, gym.spaces.Discrete)
        if not is_discrete and not (
            isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1
        ):
            raise ValueError(
                f"MLPActorCriticPolicy supports Discrete or flat Box actions, got {action_space}"
            )
        super().__init__(
            action_space=action_space,
            observation_space=observation_space,
            action_scaling=not is_discrete,
            action_bound_method=None if is_discrete else "clip",
        )
        self.is_discrete = is_discrete
        action_dim = int(action_space.n) if is_discrete else int(action_space.shape[0])
        self.networks = MLPActorCritic(
            observation_dim=int(observation_space.shape[0]),
            action_dim=action_dim,
            hidden_sizes=hidden_sizes,
            shared_torso=shared_torso,
        )
        self.log_std = (
            None if is_discrete else nn.Parameter(torch.full((action_dim,), initial_log_std))
        )
        self.deterministic_eval = deterministic_eval
        self.scores_steps_independently = True

    @staticmethod
    def _compile() -> None:
        """Skip Tianshou's numba warm-up (2-3 s): this policy's math is torch."""

    @property
    def device(self) -> torch.device:
        return self.networks.value_head.weight.device

    def forward(self, batch: Batch, state: object | None = None) -> Batch:
        """Act on ``batch.obs`` ``(N, obs_dim)``: a sample, or the mode when evaluating."""
        observations = torch.as_tensor(batch.obs, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            output = self.networks.policy_output(observations)  # (N, action_dim)
            deterministic = self.deterministic_eval and not self.is_within_training_step
            if self.is_discrete:
                actions = output.argmax(-1) if deterministic else sample_categorical(output)
            else:
                actions = (
                    output if deterministic else sample_diagonal_gaussian(output, self.log_std)
                )
        return Batch(act=actions.cpu().numpy(), state=None)

    def _log_probs_and_entropy(
        self, policy_output: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_discrete:
            return categorical_log_probs_and_entropy(policy_output, actions)
        return diagonal_gaussian_log_probs_and_entropy(policy_output, self.log_std, actions)

    def evaluate_segments(self, segments: Segments) -> SegmentEvaluation:
        policy_output, values = self.networks.policy_output_and_value(segments.observations)
        log_probs, entropy = self._log_probs_and_entropy(policy_output, segments.actions)
        return SegmentEvaluation(log_probs=log_probs, entropy=entropy, values=values)

    def log_likelihoods(self, segments: Segments) -> torch.Tensor:
        """``log pi(a_t | s_t)`` of the stored actions, with gradients, ``(B, T)``: what
        behaviour cloning (rejection sampling's fine-tuning) maximises."""
        policy_output = self.networks.policy_output(segments.observations)
        log_probs, _ = self._log_probs_and_entropy(policy_output, segments.actions)
        return log_probs

    def bootstrap_values(self, segments: Segments) -> torch.Tensor:
        return self.networks.value(segments.next_observations)
