"""One RLHF PPO iteration split into generation, scoring and update, each beside its floor.

The iteration is ``textrl.rlhf_ppo``'s, built from the same parts with the same
hyperparameters (``RLHFConfig``'s defaults, Llama 2's recipe: KL penalty beta 0.01 with
the reference scored in one no-grad pass, value clip, gradient clip 1.0, AdamW
(0.9, 0.95)), on a policy, a frozen copy of it as the reference, and a reward model
built from the same checkpoint (``load_reward_model``: the backbone plus a fresh
scalar head, wrapped in ``CombinedReward`` as ``textrl ppo`` wraps its helpfulness model):

- generation: ``TextCollector.collect`` over ``TextGenerationVectorEnv`` with
  ``LMActorCriticPolicy`` (KV-cached sampling, values at acting time), minus the time
  inside the env's reward function, which is scoring.
- scoring: that reward function (the reward model on the decoded responses) plus
  ``PPO._preprocess_batch``: the policy's log-probs and values (one no-grad forward),
  the reference's log-probs (``policy.reference_log_probs``, one no-grad forward), the
  KL-shaped rewards and GAE.
- update: ``PPO._update_with_batch`` for one epoch with the whole batch as one
  minibatch (what ``rlhf_ppo`` does at its default minibatch of 64 for batches up to 64),
  so one forward, backward, gradient clip and AdamW step.

Each phase has a floor, the bare work its result needs, on the same tokens:

- generation: ``model.generate`` on the same left-padded prompt tokens, the same
  number of new tokens, sampling the full temperature-1 distribution, KV cache on.
- scoring: three no-grad forwards (policy, reference, reward model) over the tokens
  of the iteration: prompt + response for the two LMs, the reward model's encoding of
  the decoded text for the third; no cache, no log-softmax, no values.
- update: one forward, a cross-entropy on the response tokens, backward and an AdamW
  step (same settings) of a separate copy of the policy, over the same tokens.

``ratio`` = floor seconds / phase seconds (1 = no overhead); the issue's target is
>= 0.7 for each phase, reported, not asserted. The ``iteration`` row is the sum of the
three phases against the sum of the three floors. Tokens/s counts the iteration's
generated tokens (batch x new tokens) per second of the phase, for every phase and
floor (``rlhf_ppo``'s ``speed/*`` metrics count the same tokens).

Prompts: the synthetic world's training prompts (what ``textrl ppo`` trains on by
default) of 30 to 36 characters, in split order, distinct within a batch up to 187
rows (a batch of repeated prompts would let the env's decoder prefill each prompt once
and flatter it). With SmolLM2's chat template and its system prompt they are 37 to 41
tokens, 31 to 37 with the tiny model's character tokenizer; a batch is left-padded to
its longest prompt (the table gives that width). EOS is banned until the last token
(``SamplingConfig(min_new_tokens=...)``, ``model.generate(min_new_tokens=...)``), so every
row generates exactly ``--new-tokens`` tokens in both paths.

Protocol: for every (model, batch) one untimed warm-up round, then ``--repeats``
rounds of the iteration and the three floors, every other round floors first, so that
drift in machine load hits both alike; a floor run before the round's iteration uses
the previous round's tokens (same shapes). Reported: medians over the rounds. Peak
memory is the largest rise of the process's resident set (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs``) above its level when the phase started; the
generation phase pauses around the reward call, which counts for scoring. Where the
high-water mark cannot be reset it is the process's peak so far, and the report says so.

Usage: ``python benchmarks/ppo_step.py [--models tiny,smollm2] [--batches 8,32]
[--new-tokens 32] [--repeats 3] [--threads 2] [--json]``; ``--models tiny`` for a
quick run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from arguments import comma_separated_choices, positive_int
from rollout import (
    CLEAR_REFS,
    Workload,
    generate_tokens,
    parse_batches,
    peak_rss_resettable,
    process_peak_rss_mb,
    process_status_kib,
)
from tianshou.utils.torch_utils import policy_within_training_step, torch_train_mode
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.lm_policy import LMActorCriticPolicy
from agents.text_collector import TextCollector
from envs.text_generation import TextGenerationVectorEnv
from textrl.chat import format_prompt
from textrl.combined_reward import CombinedReward
from textrl.generation import generate_responses
from textrl.models import disable_dropout, load_causal_lm, tiny_llama
from textrl.optim import ADAM_BETAS, ADAM_EPS
from textrl.prompts import PromptSource
from textrl.reward_model import encode_pairs, load_reward_model
from textrl.rlhf_ppo import RLHFConfig, build_ppo
from textrl.sampling import SamplingConfig
from textrl.tokenization import build_char_tokenizer
from textrl.world.splits import split_tasks

MODELS = ("tiny", "smollm2")
PHASES = ("generation", "scoring", "update")
ITERATION = "iteration"
"""The row of the whole iteration: the sum of the phases against the sum of the floors."""
TARGET_RATIO = 0.7
"""The issue's minimum floor/phase ratio for every phase (reported, not asserted)."""
PROMPT_CHARACTERS = range(30, 37)
"""Lengths of the world's training prompts the benchmark uses."""
CALIBRATION_PROMPTS = 8
"""Prompts whose sampled responses fix the reward's whitening (as ``rlhf_ppo`` calibrates)."""
SEED = 0
REWARD_MAX_LENGTH = 256
"""``textrl.reward_model.score``'s default, which ``CombinedReward`` scores with."""
RLHF = RLHFConfig(policy="", helpfulness_rm="", output_dir=Path())
"""``textrl ppo``'s defaults, read for the PPO and optimizer settings."""


@dataclass(frozen=True)
class Models:
    """Everything one model name loads once, for all its batch sizes."""

    name: str
    policy: PreTrainedModel
    reference: PreTrainedModel
    """A frozen copy of ``policy``, as ``rlhf_ppo`` makes it."""
    tokenizer: PreTrainedTokenizerBase
    reward_model: PreTrainedModel
    reward_tokenizer: PreTrainedTokenizerBase
    floor_policy: PreTrainedModel
    """A separate copy of ``policy`` that the update floor trains, so it never moves the policy."""


@dataclass(frozen=True)
class Measurement:
    """One timed run of one phase or floor."""

    seconds: float
    peak_rss_mb: float
    """Largest rise of the RSS high-water mark above its level at the start, or the
    process's peak RSS so far where the mark cannot be reset."""


@dataclass(frozen=True)
class IterationTokens:
    """The tokens one iteration generated and scored: what the floors run on."""

    input_ids: torch.Tensor
    """``(B, P + T)``: left-padded prompt, then response."""
    attention_mask: torch.Tensor
    """``(B, P + T)``, 1 on real tokens."""
    prompt_length: int
    """``P``."""
    reward_input_ids: torch.Tensor
    """``(B, W)``: the reward model's right-padded ``prompt + response + EOS``."""
    reward_attention_mask: torch.Tensor


@dataclass(frozen=True)
class Row:
    """One (model, batch, phase) result: medians over the repeats."""

    model: str
    batch: int
    phase: str
    seconds: float
    floor_seconds: float
    ratio: float
    """``floor_seconds / seconds``."""
    tokens_per_s: float
    """Generated tokens of the iteration per second of the phase."""
    floor_tokens_per_s: float
    peak_rss_mb: float
    """The largest peak-memory figure over the repeats."""
    floor_peak_rss_mb: float
    prompt_tokens: int
    new_tokens: int
    threads: int


class PhaseMeter:
    """Seconds and peak RSS rise of one phase, accumulated over the spans it runs in."""

    def __init__(self, rss_resettable: bool) -> None:
        self.rss_resettable = rss_resettable
        self.seconds = 0.0
        self._peak_rise_kib = 0
        self._rss_at_start_kib = 0
        self._started = 0.0

    def start(self) -> None:
        if self.rss_resettable:
            CLEAR_REFS.write_text("5")
            self._rss_at_start_kib = process_status_kib("VmRSS")
        self._started = time.perf_counter()

    def stop(self) -> None:
        self.seconds += time.perf_counter() - self._started
        if self.rss_resettable:
            rise = process_status_kib("VmHWM") - self._rss_at_start_kib
            self._peak_rise_kib = max(self._peak_rise_kib, rise)

    @contextmanager
    def span(self) -> Iterator[None]:
        self.start()
        try:
            yield
        finally:
            self.stop()

    def measurement(self) -> Measurement:
        peak_rss_mb = self._peak_rise_kib / 2**10 if self.rss_resettable else process_peak_rss_mb()
        return Measurement(seconds=self.seconds, peak_rss_mb=peak_rss_mb)


def combined(measurements: Sequence[Measurement]) -> Measurement:
    """Phases run one after another: their seconds add up, their peaks do not."""
    return Measurement(
        seconds=sum(m.seconds for m in measurements),
        peak_rss_mb=max(m.peak_rss_mb for m in measurements),
    )


def checkpoint_directory(name: str, work_dir: Path) -> str:
    """``smollm2``, or a seeded tiny Llama and its character tokenizer saved under ``work_dir``
    (the reward model loads from a directory)."""
    if name == "smollm2":
        return name
    directory = work_dir / "tiny"
    tokenizer = build_char_tokenizer()
    tiny_llama(tokenizer, seed=SEED).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def load_models(name: str, work_dir: Path) -> Models:
    """Policy, reference, reward model and the update floor's copy, as ``rlhf_ppo`` loads them."""
    checkpoint = checkpoint_directory(name, work_dir)
    policy, tokenizer = load_causal_lm(checkpoint)
    disable_dropout(policy)
    torch.manual_seed(SEED)  # the reward model's fresh scalar head
    reward_model, reward_tokenizer = load_reward_model(checkpoint)
    return Models(
        name=name,
        policy=policy,
        reference=copy.deepcopy(policy).requires_grad_(False),
        tokenizer=tokenizer,
        reward_model=reward_model.eval(),
        reward_tokenizer=reward_tokenizer,
        floor_policy=copy.deepcopy(policy),
    )


def benchmark_prompts(count: int) -> list[str]:
    """``count`` of the world's training prompts of ``PROMPT_CHARACTERS`` characters, in order
    (cycled when more are asked for than there are)."""
    fitting = [
        task.prompt for task in split_tasks("train", SEED) if len(task.prompt) in PROMPT_CHARACTERS
    ]
    return list(itertools.islice(itertools.cycle(fitting), count))


def build_workload(models: Models, batch: int, new_tokens: int) -> Workload:
    """``batch`` prompts tokenized and left-padded exactly as the env lays them out."""
    prompts = benchmark_prompts(batch)
    texts = [format_prompt(models.tokenizer, prompt) for prompt in prompts]
    encoded = models.tokenizer(
        texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
    )
    return Workload(
        model=models.policy,
        reference_model=models.reference,
        tokenizer=models.tokenizer,
        prompts=prompts,
        prompt_ids=encoded["input_ids"],
        prompt_mask=encoded["attention_mask"],
        new_tokens=new_tokens,
    )


def calibrated_reward(models: Models, sampling: SamplingConfig, new_tokens: int) -> CombinedReward:
    """The helpfulness-only ``CombinedReward`` of ``textrl ppo``, whitened on the policy's
    responses to the first prompts."""
    prompts = benchmark_prompts(CALIBRATION_PROMPTS)
    responses = generate_responses(models.policy, models.tokenizer, prompts, sampling, new_tokens)
    return CombinedReward(
        (models.reward_model, models.reward_tokenizer),
        None,
        lambda prompt: False,
        prompts,
        responses,
    )


class PPOIteration:
    """One iteration of ``rlhf_ppo``'s loop for one (model, batch), built once, run per round."""

    def __init__(
        self,
        models: Models,
        workload: Workload,
        reward: CombinedReward,
        sampling: SamplingConfig,
        rss_resettable: bool,
    ) -> None:
        self.models = models
        self.reward = reward
        self.rss_resettable = rss_resettable
        self.batch = len(workload.prompts)
        self.expected_tokens = self.batch * workload.new_tokens
        prompt_tokens = workload.prompt_ids.shape[1]
        # each reset draws `batch` prompts from the cycle: exactly the workload's, in order
        cycle = itertools.cycle(workload.prompts)
        env = TextGenerationVectorEnv(
            self.batch,
            tokenizer=models.tokenizer,
            prompts=PromptSource.from_function(lambda rng: next(cycle)),
            reward_fn=self._metered_reward,
            max_new_tokens=workload.new_tokens,
            max_prompt_tokens=prompt_tokens,
        )
        self.policy = LMActorCriticPolicy(
            model=models.policy,
            observation_space=env.single_observation_space,
            action_space=env.single_action_space,
            max_prompt_tokens=prompt_tokens,
            sampling=sampling,
            eos_token_id=models.tokenizer.eos_token_id,
            reference_model=models.reference,
        )
        self.algorithm = build_ppo(RLHF, self.policy)
        self.collector = TextCollector(self.algorithm, env, seed=SEED)
        self._generation = PhaseMeter(rss_resettable)
        self._scoring = PhaseMeter(rss_resettable)
        self._scored: tuple[list[str], list[str]] = ([], [])

    def _metered_reward(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The reward, its time and memory moved from generation to scoring."""
        self._generation.stop()
        with self._scoring.span():
            scores = self.reward(prompts, responses)
        self._scored = (list(prompts), list(responses))
        self._generation.start()
        return scores

    def run(self) -> tuple[dict[str, Measurement], IterationTokens]:
        """Collect, score and update once; each phase's measurement and the tokens."""
        self._generation = PhaseMeter(self.rss_resettable)
        self._scoring = PhaseMeter(self.rss_resettable)
        update = PhaseMeter(self.rss_resettable)
        self.collector.reset_buffer()
        with policy_within_training_step(self.policy):  # sample (not greedy), then learn
            with self._generation.span():
                stats = self.collector.collect(n_episode=self.batch)
            if stats.n_collected_steps != self.expected_tokens:
                raise RuntimeError(
                    f"the collector generated {stats.n_collected_steps} tokens, expected "
                    f"{self.expected_tokens}; an episode ended early, so EOS was not banned"
                )
            buffer = self.collector.buffer
            with self._scoring.span():
                batch, indices = buffer.sample(0)
                rollout = self.algorithm._preprocess_batch(batch, buffer, indices)
            with update.span(), torch_train_mode(self.algorithm):
                self.algorithm._update_with_batch(rollout, batch_size=None, repeat=1)
        segments = rollout.segments
        reward_ids, reward_mask = encode_pairs(
            self.models.reward_tokenizer, *self._scored, REWARD_MAX_LENGTH
        )
        tokens = IterationTokens(
            input_ids=torch.cat([segments.prompt_ids, segments.response_ids], dim=1),
            attention_mask=torch.cat([segments.prompt_mask, segments.mask.long()], dim=1),
            prompt_length=segments.prompt_ids.shape[1],
            reward_input_ids=reward_ids,
            reward_attention_mask=reward_mask,
        )
        measurements = {
            "generation": self._generation.measurement(),
            "scoring": self._scoring.measurement(),
            "update": update.measurement(),
        }
        return measurements, tokens


@torch.no_grad()
def scoring_floor(models: Models, tokens: IterationTokens) -> None:
    """Three bare no-grad forwards: policy, reference, reward model."""
    for model in (models.policy, models.reference):
        model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, use_cache=False)
    models.reward_model(
        input_ids=tokens.reward_input_ids,
        attention_mask=tokens.reward_attention_mask,
        use_cache=False,
    )


class UpdateFloor:
    """One forward, backward and AdamW step of the floor's copy of the policy."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=RLHF.learning_rate,
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            weight_decay=RLHF.weight_decay,
        )

    def run(self, tokens: IterationTokens) -> None:
        """Cross-entropy of the response tokens, one step; the previous step's gradients are
        freed first, as PPO frees them."""
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(
            input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, use_cache=False
        ).logits  # (B, P + T, V)
        predicting = logits[:, tokens.prompt_length - 1 : -1]  # (B, T, V)
        responses = tokens.input_ids[:, tokens.prompt_length :]  # (B, T)
        loss = F.cross_entropy(predicting.flatten(0, 1).float(), responses.flatten())
        loss.backward()
        self.optimizer.step()


def measure(run: Callable[[], object], rss_resettable: bool) -> Measurement:
    """Time ``run`` and take its peak memory."""
    meter = PhaseMeter(rss_resettable)
    with meter.span():
        run()
    return meter.measurement()


def with_iteration(measurements: dict[str, Measurement]) -> dict[str, Measurement]:
    """``measurements`` of the phases plus their whole, under ``ITERATION``."""
    return {**measurements, ITERATION: combined(list(measurements.values()))}


class Floors:
    """The three floors of one (model, batch), built once, run per round."""

    def __init__(self, models: Models, workload: Workload, rss_resettable: bool) -> None:
        self.models = models
        self.workload = workload
        self.update = UpdateFloor(models.floor_policy)
        self.rss_resettable = rss_resettable

    def run(self, tokens: IterationTokens) -> dict[str, Measurement]:
        """Each floor once, on ``tokens`` where it needs an iteration's tokens."""
        return {
            "generation": measure(lambda: generate_tokens(self.workload), self.rss_resettable),
            "scoring": measure(lambda: scoring_floor(self.models, tokens), self.rss_resettable),
            "update": measure(lambda: self.update.run(tokens), self.rss_resettable),
        }


def summarize(
    model: str,
    batch: int,
    prompt_tokens: int,
    new_tokens: int,
    threads: int,
    phases: dict[str, list[Measurement]],
    floors: dict[str, list[Measurement]],
) -> list[Row]:
    """One row per phase of ``phases`` (with a floor of the same name): medians, ratio."""
    tokens = batch * new_tokens
    rows = []
    for phase, measurements in phases.items():
        seconds = statistics.median(m.seconds for m in measurements)
        floor_seconds = statistics.median(m.seconds for m in floors[phase])
        rows.append(
            Row(
                model=model,
                batch=batch,
                phase=phase,
                seconds=seconds,
                floor_seconds=floor_seconds,
                ratio=floor_seconds / seconds,
                tokens_per_s=tokens / seconds,
                floor_tokens_per_s=tokens / floor_seconds,
                peak_rss_mb=max(m.peak_rss_mb for m in measurements),
                floor_peak_rss_mb=max(m.peak_rss_mb for m in floors[phase]),
                prompt_tokens=prompt_tokens,
                new_tokens=new_tokens,
                threads=threads,
            )
        )
    return rows


def measure_batch(
    models: Models,
    batch: int,
    new_tokens: int,
    repeats: int,
    threads: int,
    rss_resettable: bool,
    progress: tqdm,
) -> list[Row]:
    """A warm-up round, then ``repeats`` interleaved rounds of the iteration and its floors."""
    workload = build_workload(models, batch, new_tokens)
    sampling = SamplingConfig(temperature=1.0, min_new_tokens=new_tokens)
    reward = calibrated_reward(models, sampling, new_tokens)
    iteration = PPOIteration(models, workload, reward, sampling, rss_resettable)
    floors = Floors(models, workload, rss_resettable)
    _, tokens = iteration.run()  # warm-up: every shape once, the optimizers' state allocated
    floors.run(tokens)
    phase_runs: dict[str, list[Measurement]] = {phase: [] for phase in (*PHASES, ITERATION)}
    floor_runs: dict[str, list[Measurement]] = {phase: [] for phase in (*PHASES, ITERATION)}
    for repeat in range(repeats):
        if repeat % 2 == 0:
            measured, tokens = iteration.run()
            floor_measured = floors.run(tokens)
        else:  # floors first, on the previous round's tokens
            floor_measured = floors.run(tokens)
            measured, tokens = iteration.run()
        for phase, measurement in with_iteration(measured).items():
            phase_runs[phase].append(measurement)
        for phase, measurement in with_iteration(floor_measured).items():
            floor_runs[phase].append(measurement)
        progress.update()
    return summarize(
        models.name,
        batch,
        workload.prompt_ids.shape[1],
        new_tokens,
        threads,
        phase_runs,
        floor_runs,
    )


def target_cell(row: Row) -> str:
    """The issue's target for a phase and whether this run met it; empty for the iteration."""
    if row.phase == ITERATION:
        return ""
    return f">= {TARGET_RATIO:.1f} ({'met' if row.ratio >= TARGET_RATIO else 'missed'})"


def memory_note(rss_resettable: bool) -> str:
    """What the peak-RSS columns mean on this machine."""
    if rss_resettable:
        return (
            "Peak RSS MB: largest rise over the repeats of the resident-set high-water mark "
            "(VmHWM, reset at the start of the phase) above the RSS at that start: the phase's "
            "extra memory; memory the process already held and reuses does not count (the "
            "update and its floor first free the previous step's gradients, so theirs is net "
            "of those)."
        )
    return (
        "Peak RSS MB: the process's peak resident set so far (ru_maxrss); this platform "
        "cannot reset the high-water mark, so it is not per phase."
    )


def markdown_report(rows: list[Row], repeats: int, rss_resettable: bool) -> str:
    """The results table, the target and what is timed."""
    lines = [
        "| model | batch | phase | seconds | floor seconds | ratio | target | tokens/s "
        "| floor tokens/s | peak RSS MB | floor peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row.model,
            str(row.batch),
            row.phase,
            f"{row.seconds:.3f}",
            f"{row.floor_seconds:.3f}",
            f"{row.ratio:.2f}",
            target_cell(row),
            f"{row.tokens_per_s:,.0f}",
            f"{row.floor_tokens_per_s:,.0f}",
            f"{row.peak_rss_mb:,.1f}",
            f"{row.floor_peak_rss_mb:,.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    prompt_lengths = ", ".join(
        f"{model} {length}"
        for model, length in dict.fromkeys((row.model, row.prompt_tokens) for row in rows)
    )
    first = rows[0]
    lines += [
        "",
        f"Medians of {repeats} interleaved repeats after a warm-up round; {first.new_tokens} new "
        f"tokens per row (EOS banned); prompt width in tokens: {prompt_lengths}; torch threads "
        f"{first.threads}; float32 on the CPU.",
        "generation: TextCollector.collect over TextGenerationVectorEnv with "
        "LMActorCriticPolicy, minus the reward call; floor: model.generate, same prompts, "
        "temperature 1, full distribution, KV cache.",
        "scoring: the reward model (CombinedReward on the decoded responses) + "
        "PPO._preprocess_batch (policy log-probs and values, reference log-probs, KL shaping, "
        "GAE); floor: no-grad forwards of policy, reference and reward model on the same tokens.",
        "update: PPO._update_with_batch, one epoch, the batch as one minibatch (one forward, "
        "backward, grad clip, AdamW step); floor: forward, response cross-entropy, backward, "
        "AdamW step of a copy of the policy on the same tokens.",
        "iteration: the three phases against the three floors. ratio = floor seconds / seconds; "
        f"target (the issue's, not asserted): >= {TARGET_RATIO:.1f} for each phase. tokens/s: "
        "the iteration's generated tokens (batch x new tokens) per second.",
        memory_note(rss_resettable),
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        type=comma_separated_choices(MODELS),
        default=list(MODELS),
        help="comma-separated subset of tiny,smollm2",
    )
    parser.add_argument(
        "--batches", type=parse_batches, default=[8, 32], help="comma-separated batch sizes"
    )
    parser.add_argument(
        "--new-tokens", type=positive_int, default=32, help="tokens generated per row"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="timed rounds after a warm-up (median)"
    )
    parser.add_argument("--threads", type=positive_int, default=2, help="torch threads")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Measure every (model, batch) in turn and report one row per phase."""
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    torch.manual_seed(SEED)
    rss_resettable = peak_rss_resettable()
    rows: list[Row] = []
    progress = tqdm(
        total=len(args.models) * len(args.batches) * args.repeats, desc="rounds", file=sys.stderr
    )
    with tempfile.TemporaryDirectory() as work_dir:
        for model_name in args.models:
            models = load_models(model_name, Path(work_dir))
            for batch in args.batches:
                progress.set_postfix_str(f"{model_name} batch {batch}")
                rows += measure_batch(
                    models,
                    batch,
                    args.new_tokens,
                    args.repeats,
                    args.threads,
                    rss_resettable,
                    progress,
                )
    progress.close()
    if args.json:
        for row in rows:
            print(json.dumps(dataclasses.asdict(row)))
        print(memory_note(rss_resettable), file=sys.stderr)
    else:
        print(markdown_report(rows, args.repeats, rss_resettable))


if __name__ == "__main__":
    main(parse_args())
