"""Tianshou algorithms and policies: PPO on trajectory segments, its policies and collectors."""

from agents.mlp_policy import MLPActorCritic, MLPActorCriticPolicy
from agents.ppo import PPO, PPORollout, PPOTrainingStats
from agents.segment_buffer import SegmentBuffer
from agents.segment_policy import SegmentEvaluation, SegmentPolicy
from agents.segments import Segments, segments_from_buffer
from agents.vector_collector import VectorEnvCollector

__all__ = [
    "PPO",
    "MLPActorCritic",
    "MLPActorCriticPolicy",
    "PPORollout",
    "PPOTrainingStats",
    "SegmentBuffer",
    "SegmentEvaluation",
    "SegmentPolicy",
    "Segments",
    "VectorEnvCollector",
    "segments_from_buffer",
]
