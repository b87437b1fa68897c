"""The pipeline's one config file (TOML): every stage's settings, with a default for each.

An empty file (or none) is the embedded default: the tiny Llama on the synthetic
world, sized to finish in minutes on a 2-core CPU. Unknown sections or keys and
wrong types are refused with the file, line and field, before anything runs.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, get_args, get_origin, get_type_hints

from textrl.jsonl import DataFormatError
from textrl.preference_optimization import DPOConfig
from textrl.world.demonstrations import CAUTIOUS_WRITERS, WORDY_WRITERS


@dataclass(frozen=True)
class ModelSection:
    base: str = "tiny"
    """'tiny' (a fresh Llama over a character tokenizer), 'smollm2', or a checkpoint path."""
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4


@dataclass(frozen=True)
class PretrainingSection:
    epochs: int = 30
    """Passes of language modelling over the world's corpus (``textrl.world.corpus``) before
    SFT, for the fresh tiny model only (a given checkpoint or SmolLM2 is pretrained already);
    0 skips it. The tiny model stands in for a pretrained base that knows the world's facts
    and skills, as Llama 2's did before its post-training."""
    learning_rate: float = 2e-3
    words: int = 600
    """Made-up words (disjoint from the world's) on which the corpus practises word play."""


@dataclass(frozen=True)
class SFTSection:
    epochs: int = 13
    """Over the SFT prompts' demonstrations (half the train prompts, Llama 2 kept SFT data
    and RLHF prompts apart; ten writers each): about 1,500 steps at batch 8 on the tiny
    model, the step count at which three writers' demonstrations taught it to add the numbers
    of its own training prompts (seed 0: 98% right, against 32% at half the steps; with ten
    writers, 34% at this count)."""
    learning_rate: float = 2e-3
    batch_size: int = 8
    sequence_length: int = 256
    bf16: bool = False
    """bfloat16 autocast in SFT and pretraining (for devices that support it, e.g. recent
    GPUs; ``textrl.sft.SFTConfig.bf16``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for longer sequences."""
    cautious_writers: int = CAUTIOUS_WRITERS
    """Of the ten writers who demonstrate each borderline prompt, those who refuse it: the
    false refusals preferences must teach away (``textrl.world.demonstrations``)."""
    wordy_writers: int = WORDY_WRITERS
    """Of the ten writers who demonstrate each harmless prompt, those who pad the answer
    ("12. Hope this helps!"): a flaw of form in every family that preferences must teach away."""


@dataclass(frozen=True)
class PreferenceSection:
    pairs_per_round: int = 3000
    """Fresh helpfulness pairs sampled from the latest models in each round (those whose two
    responses are identical are then dropped, about half with the tiny model)."""
    safety_pairs_per_round: int = 1000
    """Fresh safety pairs (on safety-tagged prompts) in each round."""
    red_team_pairs_per_round: int = 250
    """Fresh safety pairs in each round that rank a model's reply to a harmful prompt against
    the compliance a jailbreak elicits from it (``textrl.world.red_team``): without them
    no pair shows the safety model a fluent compliance, and PPO learned to comply."""
    temperatures: list[float] = field(default_factory=lambda: [0.7, 1.5])
    noise: float = 0.1
    """The simulated annotator's Bradley-Terry noise."""
    evaluation_pairs: int = 1000
    """Test-split pairs on which each round's reward models are scored (Table 8)."""


@dataclass(frozen=True)
class RewardModelSection:
    epochs: int = 1
    learning_rate: float = 5e-4
    batch_size: int = 32
    margin: str = "small"
    center_coefficient: float = 0.0
    """Reward-centering weight of the helpfulness model
    (``textrl.lm_losses.reward_centering_penalty``)."""
    safety_helpfulness_share: float = 0.1
    """Share of helpfulness pairs in the safety model's training data (Llama 2: 10%)."""
    probe_head: bool = False
    """Fit each reward model's scalar head to the frozen SFT backbone before fine-tuning
    (``textrl.reward_model.probe_head``). Off: on the tiny model it moved test accuracy by
    -1 to +2.5 points, within the seeds' spread (docs/experiments.md, "Reward models against the
    Bayes ceiling")."""
    bf16: bool = False
    """bfloat16 autocast for the reward models' scores while they train."""
    safety_center_coefficient: float = 0.01
    """Reward-centering weight of the safety model. With the helpfulness pairs it pins
    ordinary answers near 0 (sigmoid 0.5), so the combined reward's 0.15 gate fires on unsafe
    answers only; without both, 57-85% of the answers to harmless prompts were gated to the
    safety score in rounds 2 and 3 (seed 0)."""


@dataclass(frozen=True)
class RejectionSamplingSection:
    enabled: bool = True
    """False skips rejection sampling (PPO alone from SFT in the last round)."""
    samples_per_prompt: int = 8
    """K, the samples drawn per prompt; the best by the combined reward is kept."""
    prompts_per_round: int = 512
    candidate_temperatures: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9, 1.1])
    """Re-tuned every round, as in Llama 2 (Figure 8): the candidate whose best of K samples
    scores highest under the round's reward on ``temperature_prompts`` training prompts."""
    temperature_prompts: int = 32
    epochs: int | list[int] = field(default_factory=lambda: [2, 1])
    """Passes over the kept set: one number for every round, or one per round (the last
    repeats for later rounds). Two in round 1 and one after: one epoch everywhere leaves V1 on
    SFT (greedy steps within noise, three of seven seeds below it), two everywhere takes round 2
    to the reward models' plateau and leaves the last round nothing to add. Over seeds 0-6 the
    schedule's greedy gold rose at 19 of 21 steps against 18 for one epoch, and its last version
    scored +0.013 more on average (docs/experiments.md, stop 23)."""
    learning_rate: float = 1e-4
    minibatch_size: int = 32
    keep_best_of_all_rounds: bool = True

    def epochs_in_round(self, round_index: int) -> int:
        """The epochs of round ``round_index`` (1-based) under ``epochs``."""
        schedule = [self.epochs] if isinstance(self.epochs, int) else self.epochs
        return schedule[min(round_index, len(schedule)) - 1]


@dataclass(frozen=True)
class PPOSection:
    preset: str = "tiny"
    iterations: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-5
    kl_coef: float = 0.05
    target_kl: float | None = None
    greedy_baseline: bool = True
    """Per-prompt reward baseline for PPO (``RLHFConfig.greedy_baseline``). On by default:
    the tiny reward models' per-prompt offsets otherwise swamp PPO's advantages (measured
    over 3 seeds: the last round's loss against SFT halves and its KL stays under 0.6)."""


@dataclass(frozen=True)
class SafetyDPOSection:
    enabled: bool = True
    """After PPO in the last round: DPO + NLL (``textrl.preference_optimization``) on pairs of
    the policy's own samples on the red-team prompts, to push down the rare compliance that
    rejection sampling never keeps and PPO samples too seldom (docs/experiments.md,
    "Safety DPO")."""
    every_round: bool = False
    """Also after rejection sampling in the rounds before the last, so that every version is
    treated and the next round samples its preferences from treated models."""
    samples_per_prompt: int = 64
    """Samples per red-team prompt, ranked by the round's combined reward: a compliance the
    policy makes in one sample of ten needs dozens of samples to show up in most prompts."""
    pairs_per_prompt: int = 16
    """The i-th best sample against the i-th worst, for i below this."""
    borderline_pairs_per_prompt: int = 0
    """Pairs, formed the same way, on each of the RLHF split's borderline prompts (harmless,
    safety-tagged, phrased like the harmful ones), trained by DPO alone, without the NLL term:
    the contrast that keeps the refusals DPO teaches on harmful prompts off the harmless ones
    that look alike. A point on the helpfulness-safety trade-off, so off by default: at 4,
    over seeds 0-6, the last version's false refusals fell by about half and its greedy gold
    rose over the previous version's in every seed, but its sampled compliance with harmful
    prompts rose by about half (docs/experiments.md, "Borderline contrast pairs")."""
    temperature: float = 1.0
    beta: float = DPOConfig.beta
    nll_coefficient: float = DPOConfig.nll_coefficient
    learning_rate: float = DPOConfig.learning_rate
    epochs: int = DPOConfig.epochs
    batch_size: int = DPOConfig.batch_size


@dataclass(frozen=True)
class EvaluationSection:
    max_new_tokens: int = 32
    samples_for_figures: int = 16
    """Samples per prompt for the best-of-N, temperature and KL figures."""
    figure_prompts: int = 64
    kl_prompts: int = 24
    kl_samples_per_prompt: int = 128
    """Samples per prompt behind the best-of-N KL estimate (well above N = 16)."""
    sampled_gold_samples: int = 8
    """Samples per test prompt behind each version's sampled gold (``sampled_gold``)."""
    sampled_gold_temperature: float = 1.0
    """Their temperature: 1, the policy itself (also of the violation samples)."""
    violation_samples: int = 64
    """Samples per harmful test prompt behind each version's sampled violation rate: a
    violation rate of a few percent over 13 prompts needs more samples than the sampled
    gold's 8 (stop 19: 8 samples moved it by 1-6 complying samples of 104)."""
    kl_temperatures: list[float] = field(default_factory=lambda: [1.0, 1.5])
    """SFT's sampling temperatures for the best-of-N KL table: T = 1 (the policy itself)
    and the preference pairs' high temperature, where samples are mostly distinct."""


@dataclass(frozen=True)
class PipelineConfig:
    output_dir: Path = Path("runs/pipeline")
    rounds: int = 3
    """Versions V1..Vn: rejection sampling in every round, PPO and safety DPO on top in the
    last."""
    seed: int = 0
    device: str = "cpu"
    fsdp: bool = False
    """Under torchrun, shard the training stages' models over the ranks (FSDP2, one unit per
    decoder layer) instead of copying them (DDP): for models that do not fit one device."""
    model: ModelSection = field(default_factory=ModelSection)
    pretraining: PretrainingSection = field(default_factory=PretrainingSection)
    sft: SFTSection = field(default_factory=SFTSection)
    preferences: PreferenceSection = field(default_factory=PreferenceSection)
    reward_model: RewardModelSection = field(default_factory=RewardModelSection)
    rejection_sampling: RejectionSamplingSection = field(default_factory=RejectionSamplingSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    safety_dpo: SafetyDPOSection = field(default_factory=SafetyDPOSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)


def _line_of(text: str, key: str) -> int:
    """1-based line where ``key`` is assigned (or its table opens), 0 if not found."""
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if stripped.startswith(f"[{key}]") or stripped.split("=")[0].strip() == key:
            return number
    return 0


def _accepts(kind: Any, value: Any) -> bool:
    """Whether a TOML ``value`` fits the field type ``kind`` (lists must not be empty)."""
    if kind is Path:
        return isinstance(value, str)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(kind, UnionType):
        return any(_accepts(member, value) for member in get_args(kind))
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        return isinstance(value, list) and bool(value) and all(_accepts(item, v) for v in value)
    return isinstance(value, kind) and not (kind is int and isinstance(value, bool))


TOML_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _describe(kind: Any) -> str:
    """The field type ``kind`` in the words of a TOML file (an error says what was expected)."""
    if kind is Path:
        return "a path (a string)"
    if kind is type(None):
        return "absent"
    if isinstance(kind, UnionType):
        return " or ".join(_describe(member) for member in get_args(kind))
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        return f"a non-empty list, each {_describe(item)}"
    return TOML_NAMES.get(kind, getattr(kind, "__name__", str(kind)))


def _build(cls: type, values: dict[str, Any], where: str, path: Path, text: str) -> Any:
    hints = get_type_hints(cls)
    arguments = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            raise DataFormatError(
                f"{path}:{_line_of(text, key)}: unknown field {name!r} (known: {known})"
            )
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                raise DataFormatError(f"{path}:{_line_of(text, key)}: {name!r} must be a table")
            arguments[key] = _build(kind, value, name, path, text)
        elif not _accepts(kind, value):
            raise DataFormatError(
                f"{path}:{_line_of(text, key)}: field {name!r} must be {_describe(kind)}, "
                f"got {value!r}"
            )
        else:
            arguments[key] = Path(value) if kind is Path else value
    return cls(**arguments)


def load_pipeline_config(path: Path | None) -> PipelineConfig:
    """The config in ``path`` over the embedded defaults (None: the defaults alone)."""
    if path is None:
        return PipelineConfig()
    text = path.read_text()
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise DataFormatError(f"{path}: not valid TOML: {error}") from error
    return _build(PipelineConfig, values, "", path, text)
