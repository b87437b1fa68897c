"""The whole Llama 2 post-training recipe on one config: the README's main job.

    python examples/rlhf_pipeline.py                                 # tiny model, minutes on CPU
    python examples/rlhf_pipeline.py --config configs/smollm2.toml   # SmolLM2-135M-Instruct
    tensorboard --logdir runs/pipeline

(tiny model: pretraining on the world's corpus ->) SFT -> preferences ->
helpfulness and safety reward models -> rounds RLHF-V1..Vn (fresh preferences
and reward models each round, rejection sampling, PPO on top in the last
round) -> a report with Llama 2's figures at small scale. Kill it at
any point and rerun the same command: it resumes after the last finished stage.
The last line printed is one JSON object: ``versions`` (name, gold_helpfulness,
gold_safety, win_rate_vs_sft), ``report`` and ``seconds``.
"""

from __future__ import annotations

import sys

from textrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
