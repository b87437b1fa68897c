"""Supervised fine-tuning, Llama 2 style (arXiv:2307.09288, section 3.1).

Prompts and answers are concatenated with a separator, packed to fill the
sequence length, and only answer tokens are trained on. AdamW with weight
decay 0.1 and a cosine schedule with linear warm-up; 2 epochs by default.
Checkpoints are Hugging Face directories (``from_pretrained`` loads them) plus
``training_state.pt`` (optimizer, schedule, step, RNG), each written to a
hidden staging directory and renamed into place, so a run killed at any
moment keeps its last checkpoint and resumes to the same weights.

Under ``torchrun`` (``textrl.distributed``) the model is wrapped in DDP and each
optimizer step's global batch of ``world_size * batch_size * gradient_accumulation``
sequences is split into one contiguous shard per rank. The step's loss is the mean
over *all* its answer tokens, ``sum_r sum_{t in shard r} CE_t / N`` with ``N`` the
global answer-token count (known on every rank: all of them hold the packed data),
so each rank back-propagates ``world_size * sum_{t in shard r} CE_t / N`` and DDP's
gradient average makes the step exactly that of one process over the global batch.
With ``fsdp`` the model is sharded per decoder layer instead (FSDP2, which averages
gradients the same way); every rank then runs as many micro-batches, padding with
zero-weight ones. Rank 0 alone logs and writes checkpoints (under FSDP from weights
gathered on every rank); they load in a single process.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from textrl import distributed
from textrl.lm_losses import IGNORE_INDEX, prompt_masked_lm_loss
from textrl.models import load_causal_lm
from textrl.optim import adamw_with_cosine
from textrl.sft_data import (
    PackedSequences,
    pack,
    packed_attention_mask,
    read_examples,
)

logger = logging.getLogger(__name__)
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.pt"


@dataclass(frozen=True)
class SFTConfig:
    """One SFT run (Llama 2 at full scale: lr 2e-5, batch 64, sequence length 4096)."""

    model: str
    """Policy to fine-tune: HF directory, .gguf file or 'smollm2'."""
    data: Path
    """Prompt/answer (or messages) JSONL."""
    output_dir: Path
    """Where checkpoints, TensorBoard logs and the report go."""
    epochs: int = 2
    """Passes over the data."""
    learning_rate: float = 2e-5
    """Peak AdamW step size (scale it up for tiny models, e.g. 1e-3)."""
    batch_size: int = 8
    """Packed sequences per micro-batch (per rank under torchrun)."""
    gradient_accumulation: int = 1
    """Micro-batches per optimizer step."""
    sequence_length: int = 256
    """Tokens per packed sequence."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    warmup_fraction: float = 0.03
    """Share of the steps with a linear warm-up before the cosine decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (memory for time)."""
    bf16: bool = False
    """bfloat16 autocast (use where the device supports it, e.g. recent GPUs)."""
    fsdp: bool = False
    """Under torchrun, shard weights, gradients and optimizer state over ranks (FSDP2, one
    unit per decoder layer) instead of a full copy per rank (DDP)."""
    save_every_steps: int = 50
    """Optimizer steps between checkpoints (the last step is always saved)."""
    seed: int = 0
    """Seeds the data order and torch."""
    device: str = "cpu"
    """cpu or cuda."""


@dataclass
class SFTResult:
    checkpoint: Path
    steps: int
    losses: list[float] = field(default_factory=list)
    tokens_per_second: float = 0.0


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (staging directories are hidden and skipped)."""
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return output_dir / f"{CHECKPOINT_PREFIX}{step:06d}"


def answer_tokens(labels: torch.Tensor) -> int:
    """Tokens ``prompt_masked_lm_loss`` averages over in ``labels (B, L)``."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: dict[str, object],
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``checkpoint-<step>`` via a staging directory and an atomic rename; ``weights``
    (``distributed.full_state_dict``) replace the model's own, which FSDP holds sharded.

    A checkpoint of the same step already there (a stage re-run after a kill that came
    between its save and its record) is moved aside first and deleted only once the new
    one is in place, because a rename cannot replace a non-empty directory."""
    target = checkpoint_path(output_dir, step)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=f".{target.name}."))
    try:
        model.save_pretrained(staging, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        torch.save(state, staging / STATE_FILE)
        replaced = staging.with_name(staging.name + ".replaced")
        if target.exists():
            os.replace(target, replaced)
        os.replace(staging, target)
        shutil.rmtree(replaced, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


@dataclass
class CheckpointSchedule:
    """A run's checkpoints: every ``every`` steps, at the step it stops at and at its last.
    Each holds what ``resume_training`` needs to continue exactly (weights, optimizer,
    schedule, every rank's random stream) plus ``extra``; the seconds spent writing them add
    up in ``seconds``, which throughput leaves out."""

    output_dir: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    context: distributed.Distributed
    extra: dict[str, object]
    every: int
    last_steps: tuple[int, ...]
    """The step the run stops at and its final step: always saved."""
    seconds: float = 0.0

    def after_step(self, step: int) -> Path | None:
        """The checkpoint written after optimizer step ``step`` (1-based), if one is due."""
        if step % self.every and step not in self.last_steps:
            return None
        begun = time.perf_counter()
        # collectives (the sharded weights and optimizer state are gathered): every rank
        rng_by_rank = distributed.all_gather_object(torch.random.get_rng_state())
        weights = distributed.full_state_dict(self.model)
        optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        if self.context.is_main_process:
            state = {
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "step": step,
                "torch_rng_by_rank": rng_by_rank,
                **self.extra,
            }
            save_checkpoint(self.output_dir, step, self.model, self.tokenizer, state, weights)
        distributed.barrier()  # the other ranks may read it (resume) once it is in place
        self.seconds += time.perf_counter() - begun
        return checkpoint_path(self.output_dir, step)


def resume_training(
    checkpoint: Path,
    model: PreTrainedModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    context: distributed.Distributed,
) -> int:
    """Load what ``CheckpointSchedule`` wrote into a run set up as the one that wrote it
    (the model already loaded from ``checkpoint`` and wrapped); the step it had reached."""
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    distributed.load_optimizer_state(model, optimizer, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _restore_rng(state["torch_rng_by_rank"], context)
    logger.info("resuming %s at step %d", checkpoint, state["step"])
    return state["step"]


def train_sft(config: SFTConfig, stop_after_steps: int | None = None) -> SFTResult:
    """Train (or resume) an SFT run; ``stop_after_steps`` ends early, as a kill would.

    Launched by ``torchrun``, every rank runs this with the same config (see the module
    docstring for how the global batch is sharded and the loss weighted).
    """
    context = distributed.setup(config.device)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    previous = checkpoints(config.output_dir)
    model_source = str(previous[-1]) if previous else config.model
    torch.manual_seed(distributed.rank_seed(config.seed))
    model, tokenizer = load_causal_lm(model_source, device=context.device)
    examples = read_examples(config.data, tokenizer)
    packed = pack(examples, config.sequence_length, tokenizer.pad_token_id)
    sequences_per_step = config.batch_size * config.gradient_accumulation * context.world_size
    steps_per_epoch = math.ceil(len(packed.input_ids) / sequences_per_step)
    total_steps = config.epochs * steps_per_epoch
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    trained = distributed.wrap(model, context, config.fsdp)  # before the optimizer (see wrap)
    optimizer, scheduler = adamw_with_cosine(
        model, config.learning_rate, config.weight_decay, total_steps, config.warmup_fraction
    )
    step = resume_training(previous[-1], model, optimizer, scheduler, context) if previous else 0
    writer = (
        SummaryWriter(str(config.output_dir / "tensorboard")) if context.is_main_process else None
    )
    result = SFTResult(checkpoint=previous[-1] if previous else Path(), steps=step)
    trained_tokens, start = 0, time.perf_counter()
    end_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    saving = CheckpointSchedule(
        config.output_dir,
        model,
        tokenizer,
        optimizer,
        scheduler,
        context,
        {"config": asdict(config)},
        config.save_every_steps,
        (end_step, total_steps),
    )
    progress = tqdm(
        range(step, end_step),
        desc="sft",
        initial=step,
        total=total_steps,
        disable=not context.is_main_process,
    )
    for step in progress:
        epoch, position = divmod(step, steps_per_epoch)
        order = torch.randperm(
            len(packed.input_ids), generator=torch.Generator().manual_seed(config.seed + epoch)
        )
        rows = order[position * sequences_per_step : (position + 1) * sequences_per_step]
        optimizer.zero_grad(set_to_none=True)
        step_loss = _accumulate_gradients(trained, packed, rows, config, context)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        trained_tokens += int((packed.segment_ids[rows] > 0).sum())
        result.losses.append(step_loss)
        if writer is not None:
            writer.add_scalar("sft/loss", step_loss, step + 1)
            writer.add_scalar("sft/learning_rate", scheduler.get_last_lr()[0], step + 1)
        progress.set_postfix(loss=f"{step_loss:.3f}")
        result.checkpoint = saving.after_step(step + 1) or result.checkpoint
        result.steps = step + 1
    elapsed = time.perf_counter() - start - saving.seconds
    result.tokens_per_second = trained_tokens / elapsed if elapsed > 0 else 0.0
    if writer is not None:
        writer.close()
    return result


def _accumulate_gradients(
    model: torch.nn.Module,
    packed: PackedSequences,
    rows: torch.Tensor,
    config: SFTConfig,
    context: distributed.Distributed,
) -> float:
    """Back-propagate this rank's shard of the step's ``rows``; returns the step's loss.

    The step's loss is the mean over all its answer tokens on all ranks: each micro-batch
    back-propagates its summed token loss times ``distributed.shard``'s scale, so neither
    the split into ranks nor into micro-batches changes the gradient.
    """
    device = context.device
    part = distributed.shard(rows, answer_tokens(packed.labels[rows]))
    micro_batches = distributed.lockstep_micro_batches(part, config.batch_size, len(rows))
    scaled_loss = torch.zeros((), dtype=torch.float64, device=device)
    for index, (micro_rows, loss_scale) in enumerate(micro_batches):
        labels = packed.labels[micro_rows].to(device)
        with distributed.gradient_sync(model, enabled=index == len(micro_batches) - 1):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                logits = model(
                    input_ids=packed.input_ids[micro_rows].to(device),
                    attention_mask=packed_attention_mask(packed.segment_ids[micro_rows]).to(device),
                    position_ids=packed.position_ids[micro_rows].to(device),
                ).logits  # (b, L, vocab)
                token_loss_sum = prompt_masked_lm_loss(logits, labels) * answer_tokens(labels)
            micro_loss = token_loss_sum * loss_scale
            micro_loss.backward()
        scaled_loss += micro_loss.detach().double()
    return distributed.global_mean(scaled_loss)


def _restore_rng(states: list[torch.Tensor], context: distributed.Distributed) -> None:
    """Each rank continues its own random stream; a run resumed on a different number of
    ranks keeps the fresh per-rank seeds instead (its streams cannot continue)."""
    if len(states) == context.world_size:
        torch.random.set_rng_state(states[context.rank])
    else:
        logger.warning(
            "checkpoint saved by %d ranks, resumed on %d: random streams start afresh",
            len(states),
            context.world_size,
        )
