"""SFT and reward-model training throughput: textrl against TRL and a bare training loop.

For each model, three systems train the same number of optimizer steps on the same
examples, batch size and sequence length, in float32 on the CPU with gradient
checkpointing off:

- textrl: ``train_sft`` (greedy in-order packing, a block-diagonal mask per example,
  loss on answer tokens only) and ``train_reward_model`` (margin ranking loss,
  ``small`` margin table).
- trl: ``SFTTrainer`` with ``packing=True`` (its default best-fit-decreasing strategy,
  which makes it padding-free: a batch is one row of concatenated examples whose
  attention transformers restricts to each example through the restarting position
  ids) and ``completion_only_loss=True``; ``RewardTrainer`` with a ``margin`` column.
  Both get textrl's optimizer and schedule through ``optimizers=`` (AdamW, betas
  0.9/0.95, eps 1e-5, weight decay 0.1 off norms, cosine with textrl's warm-up),
  TRL's own ``max_grad_norm=1.0`` clipping, ``bf16=False`` and ``activation_checkpointing
  =False`` (TRL defaults bf16 and gradient checkpointing on) and the process's torch threads.
- floor: a bare loop over the same token batches: forward, backward, AdamW step (the
  same optimizer and schedule), no gradient clipping; SFT without packing masks (one
  causal mask per packed row, positions not restarted), so its SFT loss is not the
  same math as the other two.

Data: the world's training demonstrations (``textrl world``'s ``train`` split), cycled
and cut so that textrl's packing gives exactly ``(steps + 1) * batch`` sequences (SFT),
and ``(steps + 1) * batch`` preference pairs built from them without generation:
chosen = the prompt's gold answer, rejected = the next prompt's different gold answer,
ratings cycling through the four. TRL sees the same text: with a chat template its SFT
data are prompt/completion conversations, which it renders to exactly textrl's tokens;
without one, ``prompt + separator`` and ``answer`` (TRL appends EOS, as textrl does).

Protocol: one untimed warm-up step, then ``--steps`` timed steps, all in one run, so
the schedule spans ``steps + 1`` steps for every system. A step's time is the time
from the end of the previous step to the end of this one (textrl: the wall-clock
stamps of its own TensorBoard loss events; TRL: a ``TrainerCallback``). Tokens/s is
the run's non-padding tokens per step over its mean timed seconds per step. For each
model, ``--repeats`` rounds of SFT then RM, each running textrl, trl and floor, every
other round in reverse order; medians over the rounds are reported. The loss is the
training loss of the last step, after ``steps`` updates; the data orders differ
(textrl and TRL shuffle with their own generators, the floor does not, and TRL's
packing groups examples differently), so losses agree up to that noise, and exactly
where the batches coincide.

Usage: ``python benchmarks/sft_rm.py [--models tiny,smollm2] [--steps 5] [--batch 8]
[--sequence-length 128] [--repeats 1] [--threads N] [--json]``
(``HF_HUB_DISABLE_TELEMETRY=1`` keeps TRL's trainers from pinging the Hub).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import transformers
import trl
from arguments import comma_separated_choices, positive_int
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from textrl.chat import format_prompt
from textrl.jsonl import write_jsonl_atomically
from textrl.lm_losses import MARGINS, margin_ranking_loss, margins_for
from textrl.models import load_causal_lm, model_directory, tiny_llama
from textrl.optim import adamw_with_cosine
from textrl.reward_model import (
    RewardModelConfig,
    encode_pairs,
    load_reward_model,
    train_reward_model,
)
from textrl.sft import SFTConfig, train_sft
from textrl.sft_data import PackedSequences, TokenizedExample, pack, tokenize_conversation
from textrl.tokenization import build_char_tokenizer
from textrl.world.annotator import RATINGS
from textrl.world.preferences import PreferencePair, write_preferences
from textrl.world.splits import split_tasks
from textrl.world.tasks import demonstration

MODELS = ("tiny", "smollm2")
STAGES = ("sft", "rm")
SYSTEMS = ("textrl", "trl", "floor")
LEARNING_RATES = {"tiny": 1e-3, "smollm2": 1e-5}
"""Peak learning rate per model, the same for SFT and RM and for every system."""
WEIGHT_DECAY = 0.1
WARMUP_FRACTION = 0.03
"""textrl's defaults, passed to it explicitly and to ``adamw_with_cosine`` for the others."""
MARGIN_TABLE = "small"
CATEGORY = "helpfulness"
SEED = 0
TARGET_FLOOR_RATIO = 0.8
EARLIER_MEASUREMENTS = (
    "earlier on this CPU, SmolLM2-135M fp32, batch 8 x 128 tokens: the floor about 125 "
    "tokens/s; TRL SFTTrainer with default settings (bf16, gradient checkpointing) about "
    "145 s per step"
)


@dataclass(frozen=True)
class Workload:
    """What every system trains on for one model: the model, the data, the step shape."""

    model_name: str
    model_dir: Path
    """Hugging Face directory all three systems load the model from."""
    steps: int
    """Optimizer steps per run, the warm-up step included."""
    batch: int
    sequence_length: int
    learning_rate: float
    demonstrations: list[tuple[str, str]]
    """``(prompt, answer)`` examples; textrl packs them into ``steps * batch`` sequences."""
    demonstrations_path: Path
    packed: PackedSequences
    """textrl's packing of ``demonstrations``: ``(steps * batch, sequence_length)``."""
    pairs: list[PreferencePair]
    """``steps * batch`` preference pairs."""
    preferences_path: Path
    sft_tokens: int
    """Non-padding tokens of ``packed``: what textrl and the floor train through in SFT."""
    rm_tokens: int
    """Non-padding tokens of every pair's chosen and rejected sequence."""
    work_dir: Path
    """Scratch space for the runs' output directories."""


@dataclass(frozen=True)
class Run:
    """What one training run of one system recorded."""

    step_ends: list[float]
    """Clock reading (seconds) at the end of each optimizer step, the warm-up step included."""
    losses: list[float]
    """Training loss of each step."""
    tokens: int
    """Non-padding tokens trained through over all steps."""
    data_rows: int
    """Training rows the system made of the data: packed sequences (SFT) or pairs (RM)."""


@dataclass(frozen=True)
class Measurement:
    """One run reduced to the reported figures."""

    tokens_per_s: float
    seconds_per_step: float
    """Mean over the timed steps (all but the first)."""
    tokens_per_step: float
    loss: float
    """Training loss of the last step."""
    mean_loss: float
    """Mean training loss over all steps, the warm-up step included."""
    data_rows: int


@dataclass(frozen=True)
class Row:
    """One (model, stage, system) result: medians over the repeats."""

    model: str
    stage: str
    system: str
    batch: int
    sequence_length: int
    timed_steps: int
    threads: int
    tokens_per_s: float
    floor_ratio: float
    """``tokens_per_s`` over the floor's for the same model and stage."""
    seconds_per_step: float
    tokens_per_step: float
    loss: float
    mean_loss: float
    data_rows: float


def prepare_model_directory(name: str, work_dir: Path) -> Path:
    """SmolLM2's cached directory, or a seeded tiny Llama and its tokenizer under ``work_dir``."""
    if name == "smollm2":
        return model_directory("smollm2")
    directory = work_dir / "tiny"
    tokenizer = build_char_tokenizer()
    tiny_llama(tokenizer, seed=SEED).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def fitting_demonstrations(
    tokenizer: PreTrainedTokenizerBase, sequence_length: int
) -> list[tuple[str, str, TokenizedExample]]:
    """The world's training demonstrations that fit one sequence, tokenized as textrl's SFT does."""
    fitting = []
    for index, task in enumerate(split_tasks("train", SEED)):
        answer = demonstration(task)
        messages = [
            {"role": "user", "content": task.prompt},
            {"role": "assistant", "content": answer},
        ]
        example = tokenize_conversation(tokenizer, messages, f"train demonstration {index}")
        if len(example.input_ids) <= sequence_length:
            fitting.append((task.prompt, answer, example))
    if not fitting:
        raise ValueError(
            f"no training demonstration fits in {sequence_length} tokens; raise --sequence-length"
        )
    return fitting


def select_demonstrations(
    fitting: list[tuple[str, str, TokenizedExample]],
    rows: int,
    sequence_length: int,
    pad_token_id: int,
) -> tuple[list[tuple[str, str]], PackedSequences]:
    """The first examples of ``fitting`` (cycled) that textrl packs into ``rows`` sequences."""
    candidates, tokens = [], 0
    for prompt, answer, example in itertools.cycle(fitting):
        if tokens > rows * sequence_length:  # so packing fills more than `rows` sequences
            break
        candidates.append((prompt, answer, example))
        tokens += len(example.input_ids)
    packed = pack([example for _, _, example in candidates], sequence_length, pad_token_id)
    # packing is greedy and in order, so the first `rows` sequences hold the first `count` examples
    count = int(packed.segment_ids[:rows].amax(dim=1).sum())
    selected = candidates[:count]
    return (
        [(prompt, answer) for prompt, answer, _ in selected],
        pack([example for _, _, example in selected], sequence_length, pad_token_id),
    )


def sequence_lengths(
    tokenizer: PreTrainedTokenizerBase, prompt: str, responses: list[str]
) -> list[int]:
    """Tokens of ``formatted prompt + response + EOS`` per response, as reward models see them."""
    texts = [
        format_prompt(tokenizer, prompt) + response + tokenizer.eos_token for response in responses
    ]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def preference_pairs(
    tokenizer: PreTrainedTokenizerBase,
    fitting: list[tuple[str, str, TokenizedExample]],
    count: int,
    max_length: int,
) -> list[PreferencePair]:
    """``count`` pairs: the gold answer over the next different gold answer, ratings cycling."""
    candidates = []
    for index, (prompt, answer, _) in enumerate(fitting):
        others = itertools.chain(fitting[index + 1 :], fitting[:index])
        rejected = next((other for _, other, _ in others if other != answer), None)
        if (
            rejected is not None
            and max(sequence_lengths(tokenizer, prompt, [answer, rejected])) <= max_length
        ):
            candidates.append((prompt, answer, rejected))
    if not candidates:
        raise ValueError(f"no preference pair fits in {max_length} tokens; raise --sequence-length")
    return [
        PreferencePair(
            prompt=prompt,
            chosen=chosen,
            rejected=rejected,
            rating=RATINGS[index % len(RATINGS)],
            category=CATEGORY,
            is_safety=False,
            chosen_model="gold",
            rejected_model="gold answer of another prompt",
        )
        for index, (prompt, chosen, rejected) in enumerate(
            itertools.islice(itertools.cycle(candidates), count)
        )
    ]


def build_workload(
    model_name: str, work_dir: Path, steps: int, batch: int, sequence_length: int
) -> Workload:
    """Write the model and both data files under ``work_dir`` for runs of ``steps`` steps."""
    model_dir = prepare_model_directory(model_name, work_dir)
    _, tokenizer = load_causal_lm(model_dir)
    fitting = fitting_demonstrations(tokenizer, sequence_length)
    demonstrations, packed = select_demonstrations(
        fitting, steps * batch, sequence_length, tokenizer.pad_token_id
    )
    demonstrations_path = work_dir / "train.demonstrations.jsonl"
    write_jsonl_atomically(
        demonstrations_path,
        ({"prompt": prompt, "answer": answer} for prompt, answer in demonstrations),
    )
    pairs = preference_pairs(tokenizer, fitting, steps * batch, sequence_length)
    preferences_path = work_dir / "train.preferences.jsonl"
    write_preferences(preferences_path, pairs)
    _, pair_mask = encode_pairs(
        tokenizer,
        [pair.prompt for pair in pairs] * 2,
        [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs],
        sequence_length,
    )
    return Workload(
        model_name=model_name,
        model_dir=model_dir,
        steps=steps,
        batch=batch,
        sequence_length=sequence_length,
        learning_rate=LEARNING_RATES[model_name],
        demonstrations=demonstrations,
        demonstrations_path=demonstrations_path,
        packed=packed,
        pairs=pairs,
        preferences_path=preferences_path,
        sft_tokens=int((packed.segment_ids > 0).sum()),
        rm_tokens=int(pair_mask.sum()),
        work_dir=work_dir,
    )


def tensorboard_step_ends(log_dir: Path, tag: str) -> list[float]:
    """Wall-clock stamps of the scalar ``tag``, logged once per step at the step's end."""
    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [event.wall_time for event in accumulator.Scalars(tag)]


def run_textrl_sft(workload: Workload) -> Run:
    """``train_sft`` for one epoch of the workload's demonstrations."""
    with tempfile.TemporaryDirectory(dir=workload.work_dir) as output_dir:
        result = train_sft(
            SFTConfig(
                model=str(workload.model_dir),
                data=workload.demonstrations_path,
                output_dir=Path(output_dir),
                epochs=1,
                learning_rate=workload.learning_rate,
                batch_size=workload.batch,
                sequence_length=workload.sequence_length,
                weight_decay=WEIGHT_DECAY,
                warmup_fraction=WARMUP_FRACTION,
                save_every_steps=10**9,
                seed=SEED,
            )
        )
        step_ends = tensorboard_step_ends(Path(output_dir) / "tensorboard", "sft/loss")
    return Run(step_ends, result.losses, workload.sft_tokens, len(workload.packed.input_ids))


def run_textrl_rm(workload: Workload) -> Run:
    """``train_reward_model`` for one epoch of the workload's pairs."""
    with tempfile.TemporaryDirectory(dir=workload.work_dir) as output_dir:
        result = train_reward_model(
            RewardModelConfig(
                policy=str(workload.model_dir),
                train=workload.preferences_path,
                output_dir=Path(output_dir),
                category=CATEGORY,
                margin=MARGIN_TABLE,
                epochs=1,
                learning_rate=workload.learning_rate,
                batch_size=workload.batch,
                weight_decay=WEIGHT_DECAY,
                warmup_fraction=WARMUP_FRACTION,
                max_length=workload.sequence_length,
                seed=SEED,
            )
        )
        step_ends = tensorboard_step_ends(Path(output_dir) / "tensorboard", f"rm/{CATEGORY}/loss")
    return Run(step_ends, result.losses, workload.rm_tokens, len(workload.pairs))


class StepClock(TrainerCallback):
    """Records when each optimizer step of a ``Trainer`` ends and the loss it logs."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.losses: list[float] = []

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.step_ends.append(time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        if logs is not None and "loss" in logs:
            self.losses.append(logs["loss"])


def trl_arguments(workload: Workload, output_dir: str) -> dict[str, object]:
    """The ``TrainingArguments`` fields TRL's SFT and reward configs share here."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": workload.batch,
        "max_steps": workload.steps,
        "max_length": workload.sequence_length,
        "learning_rate": workload.learning_rate,  # for its logs; the optimizer is passed in
        "max_grad_norm": 1.0,
        "bf16": False,
        "activation_checkpointing": False,  # TRL defaults its alias gradient_checkpointing on
        "use_cpu": True,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_pin_memory": False,
        "seed": SEED,
    }


def trl_sft_record(
    tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str
) -> dict[str, object]:
    """A TRL prompt/completion example with textrl's SFT text (TRL appends EOS to plain text)."""
    if tokenizer.chat_template:
        return {
            "prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": answer}],
        }
    return {"prompt": format_prompt(tokenizer, prompt), "completion": answer}


def run_trl_trainer(trainer: transformers.Trainer, clock: StepClock) -> Run:
    """Train and collect the clock's records and the trainer's non-padding token count."""
    trainer.remove_callback(transformers.PrinterCallback)  # it prints every log to stdout
    trainer.train()
    return Run(
        clock.step_ends,
        clock.losses,
        trainer.state.num_input_tokens_seen,
        len(trainer.train_dataset),
    )


def run_trl_sft(workload: Workload) -> Run:
    """TRL's ``SFTTrainer`` with packing and completion-only loss on the same examples."""
    model, tokenizer = load_causal_lm(workload.model_dir)
    dataset = datasets.Dataset.from_list(
        [trl_sft_record(tokenizer, prompt, answer) for prompt, answer in workload.demonstrations]
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory(dir=workload.work_dir) as output_dir:
        trainer = trl.SFTTrainer(
            model=model,
            args=trl.SFTConfig(
                **trl_arguments(workload, output_dir), packing=True, completion_only_loss=True
            ),
            train_dataset=dataset,
            processing_class=tokenizer,
            optimizers=adamw_with_cosine(
                model, workload.learning_rate, WEIGHT_DECAY, workload.steps, WARMUP_FRACTION
            ),
            callbacks=[clock],
        )
        return run_trl_trainer(trainer, clock)


def run_trl_rm(workload: Workload) -> Run:
    """TRL's ``RewardTrainer`` on the same pairs, texts and margins, from the same initial model."""
    torch.manual_seed(SEED)  # as train_reward_model seeds before loading: the same scalar head
    model, tokenizer = load_reward_model(workload.model_dir)
    dataset = datasets.Dataset.from_list(
        [
            {
                "prompt": format_prompt(tokenizer, pair.prompt),
                "chosen": pair.chosen,  # TRL appends EOS, as encode_pairs does
                "rejected": pair.rejected,
                "margin": MARGINS[MARGIN_TABLE][pair.rating],
            }
            for pair in workload.pairs
        ]
    )
    clock = StepClock()
    with tempfile.TemporaryDirectory(dir=workload.work_dir) as output_dir:
        trainer = trl.RewardTrainer(
            model=model,
            args=trl.RewardConfig(**trl_arguments(workload, output_dir)),
            train_dataset=dataset,
            processing_class=tokenizer,
            optimizers=adamw_with_cosine(
                model, workload.learning_rate, WEIGHT_DECAY, workload.steps, WARMUP_FRACTION
            ),
            callbacks=[clock],
        )
        return run_trl_trainer(trainer, clock)


Batch = dict[str, torch.Tensor]


def train_bare(
    model: PreTrainedModel,
    batches: list[Batch],
    loss_of: Callable[[PreTrainedModel, Batch], torch.Tensor],
    learning_rate: float,
) -> list[tuple[float, float]]:
    """Forward, backward and AdamW step per batch; ``(end time, loss)`` per step."""
    optimizer, scheduler = adamw_with_cosine(
        model, learning_rate, WEIGHT_DECAY, len(batches), WARMUP_FRACTION
    )
    model.train()
    records = []
    for batch in batches:
        loss = loss_of(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        records.append((time.perf_counter(), loss.item()))
    return records


def causal_lm_loss(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """The model's own mean cross-entropy on the labelled tokens."""
    return model(**batch).loss


def pairwise_loss(model: PreTrainedModel, batch: Batch) -> torch.Tensor:
    """The margin ranking loss of chosen rows (first half) over rejected rows (second half)."""
    rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    chosen, rejected = rewards.squeeze(-1).chunk(2)  # (B,) each
    return margin_ranking_loss(chosen, rejected, batch["margins"])


def run_floor_sft(workload: Workload) -> Run:
    """The bare loop over textrl's packed rows in order, without the packing masks."""
    model, _ = load_causal_lm(workload.model_dir)
    packed = workload.packed
    batches = [
        {
            "input_ids": packed.input_ids[rows],
            "attention_mask": (packed.segment_ids[rows] > 0).long(),
            "labels": packed.labels[rows],
        }
        for rows in torch.arange(len(packed.input_ids)).split(workload.batch)
    ]
    records = train_bare(model, batches, causal_lm_loss, workload.learning_rate)
    return Run(
        [end for end, _ in records],
        [loss for _, loss in records],
        workload.sft_tokens,
        len(packed.input_ids),
    )


def run_floor_rm(workload: Workload) -> Run:
    """The bare loop over the pairs in order, encoded as textrl encodes them."""
    torch.manual_seed(SEED)
    model, tokenizer = load_reward_model(workload.model_dir)
    batches = []
    for start in range(0, len(workload.pairs), workload.batch):
        pairs = workload.pairs[start : start + workload.batch]
        input_ids, attention_mask = encode_pairs(
            tokenizer,
            [pair.prompt for pair in pairs] * 2,
            [pair.chosen for pair in pairs] + [pair.rejected for pair in pairs],
            workload.sequence_length,
        )  # (2B, W): chosen rows, then rejected rows
        batches.append(
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "margins": margins_for([pair.rating for pair in pairs], MARGIN_TABLE),
            }
        )
    records = train_bare(model, batches, pairwise_loss, workload.learning_rate)
    return Run(
        [end for end, _ in records],
        [loss for _, loss in records],
        workload.rm_tokens,
        len(workload.pairs),
    )


RUNNERS: dict[tuple[str, str], Callable[[Workload], Run]] = {
    ("sft", "textrl"): run_textrl_sft,
    ("sft", "trl"): run_trl_sft,
    ("sft", "floor"): run_floor_sft,
    ("rm", "textrl"): run_textrl_rm,
    ("rm", "trl"): run_trl_rm,
    ("rm", "floor"): run_floor_rm,
}


def measure(run: Run, steps: int, label: str) -> Measurement:
    """Reduce ``run`` (``steps`` steps, the first a warm-up) to its reported figures."""
    if len(run.step_ends) != steps or len(run.losses) != steps:
        raise RuntimeError(
            f"{label}: recorded {len(run.step_ends)} step times and {len(run.losses)} losses, "
            f"expected {steps} of each; the system ran a different number of steps"
        )
    seconds_per_step = (run.step_ends[-1] - run.step_ends[0]) / (steps - 1)
    tokens_per_step = run.tokens / steps
    return Measurement(
        tokens_per_s=tokens_per_step / seconds_per_step,
        seconds_per_step=seconds_per_step,
        tokens_per_step=tokens_per_step,
        loss=run.losses[-1],
        mean_loss=statistics.fmean(run.losses),
        data_rows=run.data_rows,
    )


def median_of(measurements: list[Measurement], field: str) -> float:
    """The median of ``field`` over the repeats."""
    return statistics.median(getattr(measurement, field) for measurement in measurements)


def measure_model(workload: Workload, repeats: int, threads: int, progress: tqdm) -> list[Row]:
    """Run every (stage, system) ``repeats`` times, interleaved, and report the medians."""
    measurements: dict[tuple[str, str], list[Measurement]] = {key: [] for key in RUNNERS}
    for repeat in range(repeats):
        for stage in STAGES:
            for system in SYSTEMS if repeat % 2 == 0 else reversed(SYSTEMS):
                label = f"{workload.model_name} {stage} {system}"
                progress.set_postfix_str(label)
                run = RUNNERS[stage, system](workload)
                measurements[stage, system].append(measure(run, workload.steps, label))
                progress.update()
    rows = []
    for stage, system in RUNNERS:
        runs = measurements[stage, system]
        tokens_per_s = median_of(runs, "tokens_per_s")
        rows.append(
            Row(
                model=workload.model_name,
                stage=stage,
                system=system,
                batch=workload.batch,
                sequence_length=workload.sequence_length,
                timed_steps=workload.steps - 1,
                threads=threads,
                tokens_per_s=tokens_per_s,
                floor_ratio=tokens_per_s / median_of(measurements[stage, "floor"], "tokens_per_s"),
                seconds_per_step=median_of(runs, "seconds_per_step"),
                tokens_per_step=median_of(runs, "tokens_per_step"),
                loss=median_of(runs, "loss"),
                mean_loss=median_of(runs, "mean_loss"),
                data_rows=median_of(runs, "data_rows"),
            )
        )
    return rows


def target_lines(rows: list[Row]) -> list[str]:
    """textrl against the floor and TRL, per (model, stage), with the issue's targets."""
    by_key = {(row.model, row.stage, row.system): row for row in rows}
    lines = []
    for model, stage in dict.fromkeys((row.model, row.stage) for row in rows):
        textrl = by_key[model, stage, "textrl"]
        trl_ratio = textrl.tokens_per_s / by_key[model, stage, "trl"].tokens_per_s
        floor_verdict = "met" if textrl.floor_ratio >= TARGET_FLOOR_RATIO else "missed"
        trl_verdict = "met" if trl_ratio > 1 else "missed"
        lines.append(
            f"{model} {stage}: textrl/floor = {textrl.floor_ratio:.2f} (target >= "
            f"{TARGET_FLOOR_RATIO:.2f}: {floor_verdict}); textrl/trl = {trl_ratio:.2f} "
            f"(target > 1: {trl_verdict})"
        )
    return lines


def markdown_report(rows: list[Row], repeats: int) -> str:
    """The results table, the targets and how the numbers were taken."""
    lines = [
        "| model | stage | system | tokens/s | x floor | s/step | tokens/step | data rows "
        "| loss (last step) | mean loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row.model,
            row.stage,
            row.system,
            f"{row.tokens_per_s:,.0f}",
            f"{row.floor_ratio:.2f}",
            f"{row.seconds_per_step:.3f}",
            f"{row.tokens_per_step:,.0f}",
            f"{row.data_rows:,.0f}",
            f"{row.loss:.4f}",
            f"{row.mean_loss:.4f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    lines += [
        "",
        *target_lines(rows),
        f"Targets (the issue's, not asserted): textrl >= {TARGET_FLOOR_RATIO:.1f}x the floor "
        f"and ahead of TRL in SFT and RM; {EARLIER_MEASUREMENTS}.",
        "",
        f"Batch {first.batch} x {first.sequence_length} tokens; {first.timed_steps} timed steps "
        f"after 1 warm-up step; medians of {repeats} interleaved repeats; torch threads "
        f"{first.threads}; float32; gradient checkpointing off everywhere; AdamW (0.9, 0.95, "
        "eps 1e-5, weight decay 0.1) with textrl's cosine schedule in all three systems.",
        "tokens/s: non-padding tokens per step over the mean seconds per timed step. Loss: the "
        f"last of {first.timed_steps + 1} steps; mean loss: over all steps. Data rows: packed "
        "sequences (SFT) or pairs (RM).",
        "textrl: train_sft (greedy in-order packing, per-example attention) and "
        "train_reward_model (margin table 'small'). trl: SFTTrainer(packing=True, bfd, "
        "padding-free, completion_only_loss=True) and RewardTrainer with a margin column; "
        "max_grad_norm 1.0 as textrl. floor: forward + backward + AdamW, no clipping, SFT "
        "without packing masks (its SFT loss is not the same math).",
        "Data: the world's training demonstrations; preference pairs built from them (chosen = "
        "gold answer, rejected = another prompt's gold answer, ratings cycling), no generation.",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        type=comma_separated_choices(MODELS),
        default=["tiny"],
        help="comma-separated: tiny,smollm2",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=5, help="timed optimizer steps (after 1 warm-up)"
    )
    parser.add_argument("--batch", type=positive_int, default=8, help="sequences (pairs) per step")
    parser.add_argument(
        "--sequence-length", type=positive_int, default=128, help="tokens per sequence"
    )
    parser.add_argument("--repeats", type=positive_int, default=1, help="interleaved rounds")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default: torch's)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Build each model's workload, measure every stage and system, and report."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    rows: list[Row] = []
    progress = tqdm(
        total=len(args.models) * args.repeats * len(RUNNERS), desc="runs", file=sys.stderr
    )
    for model_name in args.models:
        with tempfile.TemporaryDirectory() as work_dir:
            workload = build_workload(
                model_name, Path(work_dir), args.steps + 1, args.batch, args.sequence_length
            )
            rows += measure_model(workload, args.repeats, threads, progress)
    progress.close()
    if args.json:
        for row in rows:
            print(json.dumps(dataclasses.asdict(row)))
    else:
        print(markdown_report(rows, args.repeats))


if __name__ == "__main__":
    main(parse_args())
