"""The Llama 2 post-training pipeline: SFT, reward models, rejection sampling, PPO, rounds."""

from textrl.pipeline.config import PipelineConfig, load_pipeline_config
from textrl.pipeline.runner import run_pipeline

__all__ = ["PipelineConfig", "load_pipeline_config", "run_pipeline"]
