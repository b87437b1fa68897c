"""Runs the pipeline's stages in order, recording each finished one so a rerun resumes.

The ledger (``stages.json``, rewritten atomically after every stage) maps a
stage's name to its result and wall time. A stage found there is skipped; a
stage interrupted half-way is run again from a clean directory (SFT and PPO
resume from their own checkpoints instead, so a kill costs at most their last
``save_every``).

Under torchrun every rank runs this code. The training stages (pretraining, SFT, reward
models, rejection sampling, PPO) split their work over the ranks as their own commands do;
the others (the world, sampling preference pairs, safety DPO, evaluations, the report) run on
rank 0 while the rest wait. Rank 0 writes the ledger and every rank goes on with rank 0's
result of each stage.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textrl import distributed
from textrl.checkpoint import write_atomically
from textrl.pipeline import stages
from textrl.pipeline.config import PipelineConfig
from textrl.pipeline.report import write_pipeline_report

logger = logging.getLogger(__name__)
LEDGER_FILE = "stages.json"
RESUMABLE_STAGES = ("sft", "ppo")
"""Stages that resume from their own checkpoints; the others restart from a clean directory."""


class StageLedger:
    """Finished stages with their results and seconds, persisted atomically (by rank 0)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.finished: dict[str, dict[str, Any]] = (
            json.loads(path.read_text()) if path.exists() else {}
        )

    def run(
        self,
        name: str,
        directory: Path,
        stage: Callable[[Path], dict[str, Any]],
        every_rank: bool = False,
    ) -> Any:
        """``stage(directory)`` unless done earlier: on every rank if ``every_rank`` (a stage
        that splits its work over ranks), else on rank 0 alone."""
        if name in self.finished:
            logger.info("stage %s: done earlier, skipped", name)
            return self.finished[name]["result"]
        main = distributed.is_main_process()
        if main:
            if directory.exists() and not name.endswith(RESUMABLE_STAGES):
                shutil.rmtree(directory)  # the leftovers of an interrupted run of this stage
            directory.mkdir(parents=True, exist_ok=True)
            print(f"== stage {name}", flush=True)
        distributed.barrier()  # no rank writes into the directory before it is clean
        start = time.perf_counter()
        result = distributed.from_main_process(stage(directory) if every_rank or main else None)
        self.finished[name] = {"result": result, "seconds": time.perf_counter() - start}
        if main:
            text = json.dumps(self.finished, indent=1)
            write_atomically(self.path, lambda handle: handle.write(text.encode()))
        return result

    def seconds(self) -> dict[str, float]:
        return {name: entry["seconds"] for name, entry in self.finished.items()}


def _rewarded_stage(
    stage: Callable[..., dict[str, Any]],
    config: PipelineConfig,
    round_index: int,
    policy: str,
    reward_models: dict[str, Any],
    data: Path | None,
) -> Callable[[Path], dict[str, Any]]:
    """A stage that samples ``policy`` and scores it with the round's combined reward, as
    the ledger runs it: the reward, whose calibration samples the policy, is built only if
    the stage is not already done."""
    return lambda directory: stage(
        config,
        round_index,
        policy,
        stages.combined_reward(config, reward_models, policy),
        data,
        directory,
    )


def run_pipeline(config: PipelineConfig) -> dict[str, Any]:
    """Pretraining (tiny model), SFT, then rounds V1..Vn of preferences, reward models,
    rejection sampling (and PPO and safety DPO in the last round), each version evaluated by
    the gold judges; then the report.
    Returns the summary printed as the command's last line."""
    distributed.setup(config.device)  # joins the group when launched by torchrun
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    ledger = StageLedger(out / LEDGER_FILE)
    ledger.run("world", out / "world", lambda d: stages.world_stage(config, d))
    base = ledger.run("base", out / "base", lambda d: stages.base_model_stage(config, d))
    if config.model.base == "tiny" and config.pretraining.epochs > 0:
        base = ledger.run(
            "pretraining",
            out / "pretraining",
            lambda d: stages.pretraining_stage(config, base["checkpoint"], d),
            every_rank=True,
        )
    sft = ledger.run(
        "sft",
        out / "sft",
        lambda d: stages.sft_stage(
            config, base["checkpoint"], out / "world" / "sft.demonstrations.jsonl", d
        ),
        every_rank=True,
    )
    versions = {
        "SFT": ledger.run(
            "evaluate SFT",
            out / "evaluation" / "SFT",
            lambda d: stages.evaluation_stage(config, sft["checkpoint"], None, None),
        )
    }
    latest_name, latest = "SFT", sft["checkpoint"]
    previous_models: list[tuple[str, str]] = []
    train_preferences: Path | None = None
    kept: Path | None = None
    rounds: dict[str, dict[str, Any]] = {}
    for index in range(1, config.rounds + 1):
        name = f"RLHF-V{index}"
        directory = out / f"round{index}"
        models = [(latest_name, latest), *previous_models[-1:]]
        preferences = ledger.run(
            f"{name} preferences",
            directory / "preferences",
            lambda d, models=models, index=index, earlier=train_preferences: (
                stages.preferences_stage(config, index, models, earlier, d)
            ),
        )
        train_preferences = Path(preferences["train"])
        reward_models = ledger.run(
            f"{name} reward models",
            directory / "reward_models",
            lambda d, p=preferences: stages.reward_models_stage(
                config, sft["checkpoint"], Path(p["train"]), Path(p["test"]), d
            ),
            every_rank=True,
        )
        rejection = None
        checkpoint = latest
        if config.rejection_sampling.enabled:
            rejection = ledger.run(
                f"{name} rejection sampling",
                directory / "rejection_sampling",
                _rewarded_stage(
                    stages.rejection_sampling_stage, config, index, latest, reward_models, kept
                ),
                every_rank=True,
            )
            kept = Path(rejection["kept"])
            checkpoint = rejection["checkpoint"]
        last = index == config.rounds
        ppo = None
        if last:
            ppo = ledger.run(
                f"{name} ppo",
                directory / "ppo",
                lambda d, index=index, policy=checkpoint, rms=reward_models: stages.ppo_stage(
                    config, index, policy, rms, d
                ),
                every_rank=True,
            )
            checkpoint = ppo["checkpoint"]
        safety_dpo = None
        if config.safety_dpo.enabled and (last or config.safety_dpo.every_round):
            safety_dpo = ledger.run(
                f"{name} safety DPO",
                directory / "safety_dpo",
                _rewarded_stage(
                    stages.safety_dpo_stage,
                    config,
                    index,
                    checkpoint,
                    reward_models,
                    Path(preferences["train"]),
                ),
            )
            checkpoint = safety_dpo["checkpoint"]
        versions[name] = ledger.run(
            f"evaluate {name}",
            out / "evaluation" / name,
            lambda d, c=checkpoint, previous=versions[latest_name]: stages.evaluation_stage(
                config, c, versions["SFT"]["responses"], previous["responses"]
            ),
        )
        rounds[name] = {
            "preferences": preferences,
            "reward_models": reward_models,
            "rejection_sampling": rejection,
            "ppo": ppo,
            "safety_dpo": safety_dpo,
        }
        previous_models.append((latest_name, latest))
        latest_name, latest = name, checkpoint
    report = ledger.run(
        "report",
        out / "report",
        lambda d: {
            "report": str(write_pipeline_report(config, versions, rounds, ledger.seconds(), d))
        },
    )
    return {
        "versions": [
            {
                "name": name,
                "gold_helpfulness": round(v["gold_helpfulness"], 4),
                "gold_safety": round(v["gold_safety"], 4),
                "win_rate_vs_sft": round(v["win_rate_vs_sft"], 4),
                "correct_rate": round(v["correct_rate_on_safe"], 4),
                "false_refusal_rate": round(v["false_refusal_rate"], 4),
                "violation_rate": round(v["violation_rate"], 4),
                "sampled_gold_helpfulness": round(v["sampled_gold_helpfulness"], 4),
                "sampled_gold_safety": round(v["sampled_gold_safety"], 4),
                "sampled_violation_rate": round(v["sampled_violation_rate"], 4),
                "sampled_violation_rate_se": round(v["sampled_violation_rate_se"], 4),
            }
            for name, v in versions.items()
        ],
        "report": report["report"],
        "seconds": round(sum(ledger.seconds().values()), 1),
    }
