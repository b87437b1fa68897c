"""Tianshou algorithms and policies: PPO and rejection sampling on trajectory segments, their
policies and collectors."""

from agents.mlp_policy import MLPActorCritic, MLPActorCriticPolicy
from agents.ppo import PPO, PPORollout, PPOTrainingStats
from agents.rejection_sampling import (
    KeptEpisode,
    LikelihoodPolicy,
    RejectionSampling,
    RejectionSamplingTrainingStats,
    best_of_k,
    keep_best,
)
from agents.segment_buffer import SegmentBuffer
from agents.segment_policy import SegmentEvaluation, SegmentPolicy
from agents.segments import Segments, segments_from_buffer
from agents.vector_collector import VectorEnvCollector

__all__ = [
    "PPO",
    "KeptEpisode",
    "LikelihoodPolicy",
    "MLPActorCritic",
    "MLPActorCriticPolicy",
    "PPORollout",
    "PPOTrainingStats",
    "RejectionSampling",
    "RejectionSamplingTrainingStats",
    "SegmentBuffer",
    "SegmentEvaluation",
    "SegmentPolicy",
    "Segments",
    "VectorEnvCollector",
    "best_of_k",
    "keep_best",
    "segments_from_buffer",
]
