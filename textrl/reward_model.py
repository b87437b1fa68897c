"""Reward models trained on pairwise preferences (Llama 2, section 3.2.2).

The reward model is the policy's architecture with the LM head replaced by a
scalar regression head (``AutoModelForSequenceClassification`` with one label,
which keeps the backbone's weights from the policy checkpoint and scores the
last real token). Loss: ``-log sigmoid(r_chosen - r_rejected - m(rating))``.
One epoch, AdamW, cosine schedule with 3% warm-up. Accuracy is reported
overall and per rating, as in the paper's Table 8.

Under ``torchrun`` the model is wrapped in DDP and each step's global batch of
``world_size * batch_size`` pairs is split into one shard per rank; the loss mean
over the global batch is kept exact as in SFT (``textrl.distributed.shard``); with
``fsdp`` the model is sharded per decoder layer instead, as in SFT. Rank 0 alone logs
and writes the checkpoints. As in SFT, a checkpoint holds the optimizer, schedule and random
streams too, so a killed run started again with the same config resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from textrl import distributed
from textrl.chat import format_prompt
from textrl.lm_losses import (
    IGNORE_INDEX,
    MarginTable,
    margin_ranking_loss,
    margins_for,
    reward_centering_penalty,
)
from textrl.models import ensure_distinct_padding, model_directory
from textrl.optim import adamw_with_cosine
from textrl.sft import CheckpointSchedule, checkpoints, resume_training
from textrl.sft_data import tokenize_conversation
from textrl.world.annotator import RATINGS
from textrl.world.preferences import PreferencePair, read_preferences


@dataclass(frozen=True)
class RewardModelConfig:
    """One reward-model run."""

    policy: str
    """Checkpoint whose backbone initialises the reward model."""
    train: Path
    """Preference JSONL to train on."""
    output_dir: Path
    """Checkpoint, TensorBoard logs, report."""
    category: str = "helpfulness"
    """Which preference category to train on: helpfulness or safety."""
    margin: MarginTable = "small"
    """Margin table: none, small or large (Llama 2 Table 27)."""
    epochs: int = 1
    other_category_share: float = 0.0
    """Share of the training pairs drawn (seeded) from the other category, labels as they
    are. Llama 2 trained its safety model on 90% safety and 10% helpfulness pairs, which
    shows it ordinary answers to ordinary prompts: without them its score there is an
    extrapolation, and the 0.15 gate of the combined reward fires on harmless answers."""
    center_coefficient: float = 0.0
    """Weight of ``reward_centering_penalty`` added to the ranking loss (0: Llama 2's loss)."""
    learning_rate: float = 1e-5
    """Peak AdamW step size (Llama 2: 5e-6 for 70B, 1e-5 otherwise; more for tiny models)."""
    batch_size: int = 16
    """Pairs per step (per rank under torchrun)."""
    weight_decay: float = 0.1
    warmup_fraction: float = 0.03
    max_length: int = 256
    """Tokens per prompt + response (longer ones are refused with their position)."""
    probe_head: bool = False
    """Fit the scalar head to the frozen backbone first (``probe_head``), then fine-tune all
    weights from there: linear probing then fine-tuning (Kumar et al. 2022), instead of
    fine-tuning from a random head."""
    bf16: bool = False
    """bfloat16 autocast for the scores (use where the device supports it, e.g. recent GPUs);
    the ranking loss and the weights stay in float32."""
    seed: int = 0
    device: str = "cpu"
    fsdp: bool = False
    """Under torchrun, shard the model over ranks (FSDP2) instead of copying it (DDP)."""
    save_every_steps: int = 500
    """Optimizer steps between checkpoints (the last step is always saved). Above the
    pipeline's run lengths, so its reward models write one checkpoint each."""


@dataclass
class RewardModelResult:
    checkpoint: Path
    steps: int = 0
    """Optimizer steps done, those of the run it resumed included."""
    losses: list[float] = field(default_factory=list)
    """The loss of each step this call ran (a resumed run's start after its checkpoint)."""
    pairs_per_second: float = 0.0
    probe_loss: float | None = None
    """The training loss of the probed head on the frozen backbone (``probe_head`` only)."""


def load_reward_model(
    path: str | Path, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A reward model, or a policy checkpoint given a fresh scalar head, and its tokenizer."""
    directory = model_directory(path)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    ensure_distinct_padding(tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(
        directory, num_labels=1, local_files_only=True
    )
    model.config.pad_token_id = tokenizer.pad_token_id  # pool the last real token, not EOS
    return model.to(device), tokenizer


def tokenize_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
) -> list[list[int]]:
    """Token ids of ``formatted prompt + response + EOS``, one list per pair."""
    texts = [
        format_prompt(tokenizer, prompt) + response + tokenizer.eos_token
        for prompt, response in zip(prompts, responses, strict=True)
    ]
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    too_long = [i for i, ids in enumerate(encoded) if len(ids) > max_length]
    if too_long:
        first = too_long[0]
        raise ValueError(
            f"pair {first} (prompt {prompts[first][:60]!r}): prompt + response has "
            f"{len(encoded[first])} tokens, more than max_length={max_length}"
        )
    return encoded


def pad_right(
    rows: Sequence[Sequence[int]], pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(N, L)`` ids and attention mask of token lists."""
    width = max(len(ids) for ids in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, tokens in enumerate(rows):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``(N, L)`` ids and mask of ``formatted prompt + response + EOS``."""
    return pad_right(
        tokenize_pairs(tokenizer, prompts, responses, max_length), tokenizer.pad_token_id
    )


def score_encoded(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Raw scalar rewards ``(N,)`` of right-padded rows (pooled at the last real token)."""
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.squeeze(-1)


SCORE_BATCH_SIZE = 64
"""Rows per forward pass in ``score``. One pass over thousands of responses pads them all to
the longest and runs slower: 3,264 responses through the tiny safety model took 16.5 s in one
pass and 4.3 s in passes of 64 (stop 21, this 2-core CPU)."""


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
    max_length: int = 256,
    batch_size: int = SCORE_BATCH_SIZE,
) -> torch.Tensor:
    """Raw scalar rewards ``(N,)``, ``batch_size`` rows per pass (with gradients when the
    caller allows them)."""
    return torch.cat(
        [
            score_encoded(
                model,
                *encode_pairs(
                    tokenizer,
                    prompts[start : start + batch_size],
                    responses[start : start + batch_size],
                    max_length,
                ),
            )
            for start in range(0, len(prompts), batch_size)
        ]
    )


@torch.no_grad()
def ranking_accuracy_by_rating(
    scorer: Callable[[list[str], list[str]], torch.Tensor],
    pairs: Sequence[PreferencePair],
    batch_size: int = 64,
) -> dict[str, float]:
    """Share of pairs where ``scorer(chosen) > scorer(rejected)`` (ties count half), per
    rating and ``"overall"``; ``scorer(prompts, responses)`` returns one score per response."""
    correct: dict[str, list[float]] = defaultdict(list)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start : start + batch_size]
        rewards = scorer(
            [p.prompt for p in batch] * 2, [p.chosen for p in batch] + [p.rejected for p in batch]
        )
        chosen, rejected = rewards[: len(batch)], rewards[len(batch) :]
        # equal rewards (identical responses) are a coin flip, as for the Bayes ceiling
        wins = torch.where(chosen == rejected, 0.5, (chosen > rejected).float()).tolist()
        for pair, win in zip(batch, wins, strict=True):
            correct[pair.rating].append(win)
            correct["overall"].append(win)
    return {key: sum(values) / len(values) for key, values in correct.items()}


def accuracy_by_rating(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    batch_size: int = 64,
    max_length: int = 256,
) -> dict[str, float]:
    """The reward model's ranking accuracy (Llama 2's Table 8)."""
    return ranking_accuracy_by_rating(
        lambda prompts, responses: score(model, tokenizer, prompts, responses, max_length),
        pairs,
        batch_size,
    )


def encode_responses(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], responses: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``(N, L)`` ids, attention mask and labels (``IGNORE_INDEX`` outside the
    response and its end token) of one-turn conversations, tokenized exactly as SFT trains
    (``tokenize_conversation``)."""
    examples = [
        tokenize_conversation(
            tokenizer,
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            f"pair {index}",
        )
        for index, (prompt, response) in enumerate(zip(prompts, responses, strict=True))
    ]
    ids, mask = pad_right([e.input_ids for e in examples], tokenizer.pad_token_id)
    labels, _ = pad_right([e.labels for e in examples], IGNORE_INDEX)
    return ids, mask, labels


def summed_log_probs(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log pi(response | prompt)`` summed over the labelled tokens, and their count, both
    ``(N,)`` on the model's device (with gradients when the caller allows them)."""
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1]
    targets = labels[:, 1:].to(device)
    answer = targets != IGNORE_INDEX
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    token_log_probs = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (token_log_probs * answer).sum(1), answer.sum(1)


@torch.no_grad()
def response_log_likelihoods(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    responses: Sequence[str],
) -> torch.Tensor:
    """``log pi(response | prompt)`` ``(N,)``, summed over the response's tokens and its end
    token."""
    return summed_log_probs(model, *encode_responses(tokenizer, prompts, responses))[0].cpu()


def likelihood_accuracy_by_rating(
    policy: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    batch_size: int = 64,
) -> dict[str, float]:
    """The accuracy of ranking each pair by the policy's own likelihood, with no training.

    The baseline a reward model initialised from ``policy`` should beat: the policy already
    ranks answers it knows above answers it does not. A reward model below it has lost, in
    training its scalar head, knowledge that its backbone had.
    """
    return ranking_accuracy_by_rating(
        lambda prompts, responses: response_log_likelihoods(policy, tokenizer, prompts, responses),
        pairs,
        batch_size,
    )


@torch.no_grad()
def last_token_features(
    model: PreTrainedModel,
    rows: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = SCORE_BATCH_SIZE,
) -> torch.Tensor:
    """``(N, hidden)`` float64 final hidden states at each row's last token: what the scalar
    head of ``model`` (a ``*ForSequenceClassification``) reads to score the row."""
    device = next(model.parameters()).device
    features = []
    for start in tqdm(range(0, len(rows), batch_size), desc="probe features", leave=False):
        ids, mask = pad_right(rows[start : start + batch_size], pad_token_id)
        hidden = model.base_model(
            input_ids=ids.to(device), attention_mask=mask.to(device)
        ).last_hidden_state
        last = mask.sum(1).to(device) - 1
        features.append(hidden[torch.arange(len(ids), device=device), last].double().cpu())
    return torch.cat(features)


PROBE_L2 = 1e-4
"""Ridge weight of the probe's fit: keeps the weights finite on pairs the frozen features
separate, small enough not to bias the rest (fit with the plain logistic loss on the tiny
model's round-1 and round-3 pairs of seed 1, weights 1e-4 and 1e-3 ranked within a point of
each other, 1e-2 one to two points worse)."""


def fit_linear_head(
    chosen_features: torch.Tensor,
    rejected_features: torch.Tensor,
    margins: torch.Tensor,
    center_coefficient: float = 0.0,
    l2: float = PROBE_L2,
) -> tuple[torch.Tensor, float]:
    """The weights ``w`` minimising the reward model's own loss for ``r = w . h`` with the
    features ``h`` fixed (``margin_ranking_loss`` plus ``center_coefficient`` times
    ``reward_centering_penalty``, plus ``l2 * |w|^2``), and that loss without the ridge term.

    The loss is convex in ``w``, so L-BFGS finds its minimum from zero.
    """
    weights = torch.zeros(chosen_features.shape[1], dtype=torch.float64, requires_grad=True)
    margins = margins.double()

    def ranking_loss() -> torch.Tensor:
        chosen, rejected = chosen_features @ weights, rejected_features @ weights
        return margin_ranking_loss(
            chosen, rejected, margins
        ) + center_coefficient * reward_centering_penalty(chosen, rejected)

    optimizer = torch.optim.LBFGS(
        [weights],
        max_iter=500,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = ranking_loss() + l2 * (weights**2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return weights.detach(), ranking_loss().item()


def probe_head(
    model: PreTrainedModel,
    chosen_tokens: Sequence[Sequence[int]],
    rejected_tokens: Sequence[Sequence[int]],
    pad_token_id: int,
    margins: torch.Tensor,
    center_coefficient: float = 0.0,
) -> float:
    """Set ``model``'s scalar head to the best linear ranker of its frozen backbone's features
    (``fit_linear_head``); returns that ranker's training loss.

    Why: from a random head, the first steps' gradients through the backbone are noise that
    distorts the features the policy learned (Kumar et al. 2022). On the tiny model a head fit
    this way to the frozen SFT backbone ranks as well as the whole model fine-tuned from a
    random head, but fine-tuning from it gained 1.6 points on one seed's pairs and lost 0.5 on
    another's (docs/experiments.md, "Reward models against the Bayes ceiling"): an option for
    pretrained backbones, whose features are the ones worth keeping.
    """
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear) or head.out_features != 1:
        raise ValueError(f"{type(model).__name__} has no one-output linear `score` head to probe")
    was_training = model.training
    model.eval()
    features = last_token_features(model, [*chosen_tokens, *rejected_tokens], pad_token_id)
    model.train(was_training)
    weights, loss = fit_linear_head(
        features[: len(chosen_tokens)], features[len(chosen_tokens) :], margins, center_coefficient
    )
    with torch.no_grad():
        head.weight.copy_(weights.to(head.weight)[None])
        if head.bias is not None:
            head.bias.zero_()
    return loss


def training_pairs(
    pairs: Sequence[PreferencePair], config: RewardModelConfig
) -> list[PreferencePair]:
    """``config.category``'s pairs plus, drawn with ``config.seed``, enough pairs of the other
    category to make ``config.other_category_share`` of the whole (as many as there are)."""
    if not 0.0 <= config.other_category_share < 1.0:
        raise ValueError(
            f"other_category_share must be in [0, 1), got {config.other_category_share}"
        )
    own = [p for p in pairs if p.category == config.category]
    if not own:
        raise ValueError(f"{config.train}: no pairs of category {config.category!r}")
    others = [p for p in pairs if p.category != config.category]
    share = config.other_category_share
    count = min(len(others), round(share / (1.0 - share) * len(own)))
    chosen = torch.randperm(len(others), generator=torch.Generator().manual_seed(config.seed))
    return own + [others[i] for i in chosen[:count].tolist()]


def train_reward_model(
    config: RewardModelConfig, stop_after_steps: int | None = None
) -> RewardModelResult:
    """Train (or resume) on ``config.category``'s pairs of ``config.train``; returns the
    checkpoint. ``stop_after_steps`` ends early, as a kill would.

    Launched by ``torchrun``, every rank runs this with the same config.
    """
    context = distributed.setup(config.device)
    previous = checkpoints(config.output_dir) if config.output_dir.is_dir() else []
    torch.manual_seed(config.seed)  # the same scalar head on every rank
    pairs = training_pairs(read_preferences(config.train), config)
    model, tokenizer = load_reward_model(
        previous[-1] if previous else config.policy, context.device
    )
    # tokenized once (and checked for length up front), not again in every step and epoch
    prompts = [p.prompt for p in pairs]
    try:
        chosen_tokens, rejected_tokens = (
            tokenize_pairs(tokenizer, prompts, responses, config.max_length)
            for responses in ([p.chosen for p in pairs], [p.rejected for p in pairs])
        )
    except ValueError as error:
        raise ValueError(f"{config.train} ({config.category} pairs): {error}") from None
    result = RewardModelResult(checkpoint=previous[-1] if previous else Path())
    if config.probe_head and not previous:  # every rank fits the same head, before sharding
        result.probe_loss = probe_head(
            model,
            chosen_tokens,
            rejected_tokens,
            tokenizer.pad_token_id,
            margins_for([p.rating for p in pairs], config.margin),
            config.center_coefficient,
        )
    torch.manual_seed(distributed.rank_seed(config.seed))
    pairs_per_step = config.batch_size * context.world_size
    steps_per_epoch = math.ceil(len(pairs) / pairs_per_step)
    total_steps = config.epochs * steps_per_epoch
    model.train()
    trained = distributed.wrap(model, context, config.fsdp)  # before the optimizer (see wrap)
    optimizer, scheduler = adamw_with_cosine(
        model, config.learning_rate, config.weight_decay, total_steps, config.warmup_fraction
    )
    step = resume_training(previous[-1], model, optimizer, scheduler, context) if previous else 0
    result.steps = step
    writer = (
        SummaryWriter(str(config.output_dir / "tensorboard")) if context.is_main_process else None
    )
    if writer is not None and result.probe_loss is not None:
        writer.add_scalar(f"rm/{config.category}/loss", result.probe_loss, 0)
    trained_pairs, start = 0, time.perf_counter()
    end_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    saving = CheckpointSchedule(
        config.output_dir,
        model,
        tokenizer,
        optimizer,
        scheduler,
        context,
        {"category": config.category, "config": asdict(config)},
        config.save_every_steps,
        (end_step, total_steps),
    )
    steps = tqdm(
        range(step, end_step),
        desc=f"reward model ({config.category})",
        initial=step,
        total=total_steps,
        disable=not context.is_main_process,
    )
    for step in steps:
        epoch, position = divmod(step, steps_per_epoch)
        order = torch.randperm(
            len(pairs), generator=torch.Generator().manual_seed(config.seed + epoch)
        )
        rows = order[position * pairs_per_step : (position + 1) * pairs_per_step]
        trained_pairs += len(rows)
        part = distributed.shard(rows, len(rows))
        batch = [pairs[i] for i in part.rows]
        rows = [chosen_tokens[i] for i in part.rows] + [rejected_tokens[i] for i in part.rows]
        with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=config.bf16):
            rewards = score_encoded(trained, *pad_right(rows, tokenizer.pad_token_id))
        rewards = rewards.float()
        chosen, rejected = rewards[: len(batch)], rewards[len(batch) :]
        pair_loss = margin_ranking_loss(
            chosen,
            rejected,
            margins_for([p.rating for p in batch], config.margin).to(rewards.device),
        ) + config.center_coefficient * reward_centering_penalty(chosen, rejected)
        pair_loss_sum = pair_loss * len(batch)
        scaled_loss = pair_loss_sum * part.loss_scale
        optimizer.zero_grad(set_to_none=True)
        scaled_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        loss = distributed.global_mean(scaled_loss)
        result.losses.append(loss)
        if writer is not None:
            writer.add_scalar(f"rm/{config.category}/loss", loss, step + 1)
        result.checkpoint = saving.after_step(step + 1) or result.checkpoint
        result.steps = step + 1
    elapsed = time.perf_counter() - start - saving.seconds
    result.pairs_per_second = trained_pairs / elapsed if elapsed > 0 else 0.0
    if writer is not None:
        writer.close()
    return result


def accuracy_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per rating plus overall, one column per evaluated split."""
    splits = list(results)
    lines = ["| rating | " + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for rating in (*RATINGS, "overall"):
        cells = [f"{results[s][rating]:.3f}" if rating in results[s] else "n/a" for s in splits]
        lines.append(f"| {rating} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
