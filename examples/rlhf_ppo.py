"""RLHF with PPO: the CartPole ``agents.PPO`` class trains a language model.

    python examples/rlhf_ppo.py                 # tiny model: SFT, reward models, then PPO
    python examples/rlhf_ppo.py --config configs/smollm2_ppo.toml   # SmolLM2-135M-Instruct
    textrl ppo --policy <sft checkpoint> --helpfulness-rm <rm> --safety-rm <rm> --out runs/ppo

Without checkpoints of your own, this runs the pipeline with one round and no
rejection sampling (``configs/ppo_only.toml``): SFT on the synthetic world's
demonstrations, preference collection, helpfulness and safety reward models, and
PPO from the SFT model; the report (``round1/ppo/report.md``) plots gold and proxy
reward against KL, in the style of Gao et al. 2022. With your own checkpoints,
call ``textrl ppo`` directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

from textrl.cli import main

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "ppo_only.toml"

if __name__ == "__main__":
    arguments = sys.argv[1:]
    if "--config" not in arguments:
        arguments = ["--config", str(DEFAULT_CONFIG), *arguments]
    sys.exit(main(["pipeline", *arguments]))
