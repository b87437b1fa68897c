"""RLHF with PPO (Llama 2, section 3.2.3): the CartPole ``agents.PPO`` on a language model.

One iteration: the ``TextCollector`` drives the text environment (state =
prompt + tokens, action = next token) with the LM policy for ``batch_size``
episodes; the environment scores each finished response with the combined
reward (``textrl.combined_reward``); ``agents.PPO`` shapes the rewards with
``-beta * KL(pi || pi_ref)`` per token (the reference scored in one no-grad
pass, or the base weights under LoRA), computes GAE and takes its clipped
steps. Nothing here is a text-only copy of PPO: this module only wires,
logs, evaluates and checkpoints.

Checkpoints (``checkpoint-NNNNNN``, atomic) hold the policy in Hugging Face
format (merged when LoRA is used, so ``from_pretrained`` loads it), the value
head, the optimizer, the KL controller and the metric history; a resumed run
reseeds each iteration from (seed, iteration) and so replays the same run.

Under ``torchrun`` with ``fsdp`` the policy LM and its frozen reference copy are sharded
by FSDP2 (``textrl.distributed.shard_per_layer``). Their forwards are then collectives, so
every rank runs as many: rollouts and greedy samples decode in lockstep across ranks
(a finished rank feeds padding until all are done), scoring is one forward per rollout on
every rank, the update's minibatch count is fixed by the equal per-rank batch, and every
rank joins the gold evaluation that rank 0 records.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tianshou.algorithm.optim import TorchOptimizerFactory
from tianshou.utils.torch_utils import policy_within_training_step
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.lm_policy import LMActorCriticPolicy
from agents.ppo import PPO, PPOTrainingStats
from agents.text_collector import TextCollector
from envs.text_generation import RewardFunction, TextGenerationVectorEnv
from textrl import distributed
from textrl.combined_reward import CombinedReward
from textrl.generation import generate_responses
from textrl.jsonl import read_jsonl
from textrl.kl import AdaptiveKLController, KLEstimator
from textrl.masked import ReduceSum
from textrl.models import disable_dropout, load_causal_lm
from textrl.optim import ADAM_BETAS, ADAM_EPS
from textrl.reports import markdown_table, reward_vs_kl_figure, write_report
from textrl.reward_baseline import BaselinedReward
from textrl.sampling import SamplingConfig
from textrl.sft import CHECKPOINT_PREFIX, checkpoints, save_checkpoint
from textrl.world.annotator import category_of, gold_value
from textrl.world.evaluation import GREEDY, GoldReward, evaluate_responses
from textrl.world.splits import split_tasks
from textrl.world.tasks import Task, all_tasks, judge

logger = logging.getLogger(__name__)
STATE_FILE = "training_state.pt"
ADAPTER_DIRECTORY = "lora_adapter"

PRESETS: dict[str, dict[str, object]] = {
    # Llama 2 (arXiv:2307.09288, section 3.2.3): AdamW (0.9, 0.95), eps 1e-5, weight decay
    # 0.1, grad clip 1.0, constant lr 1e-6, clip 0.2, minibatch 64, 512 prompts per
    # iteration, beta 0.01, one epoch.
    "llama2": dict(learning_rate=1e-6, minibatch_size=64, batch_size=512, epochs=1, kl_coef=0.01),
    # the same recipe scaled for a ~1M-parameter model and a CPU: more prompts per step
    # relative to the batch, a larger step size, a few epochs over each rollout.
    "tiny": dict(learning_rate=3e-4, minibatch_size=16, batch_size=64, epochs=4, kl_coef=0.05),
}


@dataclass(frozen=True)
class RLHFConfig:
    """One PPO run from an SFT checkpoint and reward model(s); Llama 2 values by default."""

    policy: str
    """SFT checkpoint (HF directory, .gguf or 'smollm2'): the initial policy and the reference."""
    helpfulness_rm: str | None
    """Helpfulness reward-model checkpoint (``textrl rm``); None with ``gold_reward``."""
    output_dir: Path
    """Checkpoints, TensorBoard logs and the report."""
    safety_rm: str | None = None
    """Safety reward model; with it the reward is Llama 2's gated combination."""
    prompts: Path | None = None
    """Prompt JSONL (``prompt``, optional ``is_safety``); None = the synthetic world's RLHF
    prompts, which also enables gold rewards and the gold evaluation."""
    world_split_seed: int = 0
    """Seed of the synthetic world's splits."""
    iterations: int = 20
    """PPO iterations (rollout + update)."""
    batch_size: int = 512
    """Episodes (prompts) per iteration."""
    minibatch_size: int = 64
    """Sequences per gradient step."""
    gradient_accumulation: int = 1
    """Micro-batches per minibatch (same step, less activation memory)."""
    epochs: int = 1
    """PPO epochs over each rollout."""
    learning_rate: float = 1e-6
    """Constant AdamW step size."""
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    clip_epsilon: float = 0.2
    value_clip_epsilon: float | None = 0.2
    value_coef: float = 0.1
    gamma: float = 1.0
    """Discount (1: the score is the return of the whole response)."""
    gae_lambda: float = 0.95
    kl_coef: float = 0.01
    """beta of the per-token KL penalty (fixed unless ``target_kl`` is set)."""
    target_kl: float | None = None
    """Adaptive beta (Ziegler et al.): steer the per-response KL to this target."""
    kl_horizon: int = 10_000
    """Horizon of the adaptive controller, in episodes."""
    kl_estimator: KLEstimator = "k1"
    whiten_rewards: bool = False
    gold_reward: bool = False
    """Score with the synthetic world's gold judges instead of reward models (world prompts
    only): Gao et al.'s gold model, which separates what PPO can gain from what a learned
    reward model's errors cost."""
    greedy_baseline: bool = False
    """Subtract from each score the prompt's score of the initial policy's greedy response
    (``textrl.reward_baseline``, ReMax): removes the reward model's per-prompt offsets."""
    missing_eos_penalty: float | None = None
    """Added to the score of a response cut at max_new_tokens (e.g. -1)."""
    temperature: float = 1.0
    """Sampling temperature (also applied when log-probs are recomputed)."""
    max_new_tokens: int = 32
    max_prompt_tokens: int = 64
    lora_rank: int = 0
    """LoRA rank through peft (0 = full fine-tuning); the reference is then the base weights."""
    calibration_prompts: int = 256
    """Prompts whose SFT responses fix the reward's whitening statistics."""
    eval_every: int = 5
    """Iterations between gold evaluations on the validation split (world prompts only)."""
    save_every: int = 5
    """Iterations between checkpoints (the last one is always saved)."""
    fsdp: bool = False
    """Under torchrun, shard the policy and the reference over ranks (FSDP2) instead of
    copying them; full fine-tuning only (lora_rank 0)."""
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_preset(cls, preset: str, **overrides: object) -> RLHFConfig:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})


@dataclass
class RLHFResult:
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    samples_before: list[dict[str, str]] = field(default_factory=list)
    samples_after: list[dict[str, str]] = field(default_factory=list)


class RecordingReward:
    """The env's reward function, remembering the last rollout's prompts, responses, scores."""

    def __init__(self, reward: RewardFunction) -> None:
        self.reward = reward
        self.prompts: list[str] = []
        self.responses: list[str] = []
        self.scores: list[float] = []

    def clear(self) -> None:
        self.prompts, self.responses, self.scores = [], [], []

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        scores = self.reward(prompts, responses)
        self.prompts += prompts
        self.responses += responses
        self.scores += list(scores)
        return scores


@dataclass(frozen=True)
class PromptSet:
    """Training prompts, their safety tags, and the world's tasks when they come from it."""

    prompts: list[str]
    is_safety: dict[str, bool]
    tasks: dict[str, Task] | None
    evaluation_tasks: list[Task] | None


def load_prompt_set(config: RLHFConfig) -> PromptSet:
    if config.prompts is None:
        train = split_tasks("rlhf", config.world_split_seed)
        return PromptSet(
            prompts=[t.prompt for t in train],
            is_safety={t.prompt: t.is_safety for t in all_tasks()},
            tasks={t.prompt: t for t in train},
            evaluation_tasks=split_tasks("validation", config.world_split_seed),
        )
    records = read_jsonl(config.prompts, {"prompt": str})
    return PromptSet(
        prompts=[r["prompt"] for r in records],
        is_safety={r["prompt"]: bool(r.get("is_safety", False)) for r in records},
        tasks=None,
        evaluation_tasks=None,
    )


def build_reward(
    config: RLHFConfig,
    prompt_set: PromptSet,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
) -> RewardFunction:
    """The combined reward, whitened on the initial policy's samples of calibration prompts
    (or the gold judges' scores with ``gold_reward``), and with ``greedy_baseline`` less each
    prompt's score of the initial greedy response."""
    reward = (
        _gold_reward(prompt_set)
        if config.gold_reward
        else _combined_reward(config, prompt_set, model, tokenizer)
    )
    if not config.greedy_baseline:
        return reward
    # every prompt the reward will see: training, and the gold evaluation's (its proxy column)
    prompts = prompt_set.prompts + [t.prompt for t in prompt_set.evaluation_tasks or []]
    greedy = generate_responses(model, tokenizer, prompts, GREEDY, config.max_new_tokens)
    return BaselinedReward(reward, prompts, greedy)


def _gold_reward(prompt_set: PromptSet) -> GoldReward:
    if prompt_set.tasks is None:
        raise ValueError(
            "gold_reward scores with the synthetic world's judges: train on the world's "
            "prompts (no prompts file)"
        )
    return GoldReward(all_tasks())


def _combined_reward(
    config: RLHFConfig,
    prompt_set: PromptSet,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
) -> CombinedReward:
    if config.helpfulness_rm is None:
        raise ValueError("give a helpfulness reward model, or use the gold reward")
    rng = np.random.default_rng(config.seed)
    chosen = rng.integers(0, len(prompt_set.prompts), config.calibration_prompts)
    torch.manual_seed(config.seed)
    return CombinedReward.calibrated_on_policy(
        config.helpfulness_rm,
        config.safety_rm,
        prompt_set.is_safety,
        (model, tokenizer),
        [prompt_set.prompts[i] for i in chosen],
        SamplingConfig(temperature=config.temperature),
        config.max_new_tokens,
        config.device,
    )


def build_ppo(
    config: RLHFConfig, policy: LMActorCriticPolicy, reduce_sum: ReduceSum | None = None
) -> PPO:
    """``agents.PPO`` with the run's shaping, clipping and AdamW settings; ``reduce_sum``
    sums statistics over the ranks of a ``torchrun`` job."""
    return PPO(
        policy=policy,
        optim=TorchOptimizerFactory(
            torch.optim.AdamW,
            lr=config.learning_rate,
            betas=ADAM_BETAS,
            eps=ADAM_EPS,
            weight_decay=config.weight_decay,
        ),
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_epsilon=config.clip_epsilon,
        value_clip_epsilon=config.value_clip_epsilon,
        value_coef=config.value_coef,
        max_grad_norm=config.max_grad_norm,
        kl_coef=config.kl_coef,
        kl_estimator=config.kl_estimator,
        adaptive_kl=AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
        if config.target_kl is not None
        else None,
        whiten_rewards=config.whiten_rewards,
        gradient_accumulation_steps=config.gradient_accumulation,
        reduce_sum=reduce_sum,
    )


def _lora_model(model: PreTrainedModel, rank: int) -> PreTrainedModel:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ValueError("lora_rank > 0 needs peft: pip install 'textrl[lora]'") from error
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return get_peft_model(
        model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
    )


def _merged_copy(model: PreTrainedModel) -> PreTrainedModel:
    """The policy as a plain HF model (LoRA merged into a copy; the live model is untouched)."""
    if hasattr(model, "merge_and_unload"):
        return copy.deepcopy(model).merge_and_unload()
    return model


@dataclass
class _Run:
    """Everything one training run holds."""

    config: RLHFConfig
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    policy: LMActorCriticPolicy
    algorithm: PPO
    env: TextGenerationVectorEnv
    collector: TextCollector
    reward: RecordingReward
    prompt_set: PromptSet
    writer: SummaryWriter | None
    """Rank 0's TensorBoard writer (None on the other ranks of a ``torchrun`` job)."""
    sharded: bool
    """The policy and reference are FSDP-sharded over several ranks (decode in lockstep)."""


def _build_run(config: RLHFConfig, previous: Path | None, reward_fn: RewardFunction | None) -> _Run:
    if config.fsdp and config.lora_rank > 0:
        raise ValueError(
            "fsdp shards the full policy and a frozen reference copy; with LoRA (lora_rank > 0) "
            "train without --fsdp (each rank holds the base model) or with lora_rank 0"
        )
    torch.manual_seed(config.seed)
    model, tokenizer = load_causal_lm(config.policy, device=config.device)
    disable_dropout(model)
    prompt_set = load_prompt_set(config)
    reward = RecordingReward(reward_fn or build_reward(config, prompt_set, model, tokenizer))
    reference = None
    if config.lora_rank > 0:
        model = _lora_model(model, config.lora_rank)
        if previous is not None:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            adapter = load_file(previous / ADAPTER_DIRECTORY / "adapter_model.safetensors")
            set_peft_model_state_dict(model, adapter)
    else:
        reference = copy.deepcopy(model).requires_grad_(False)
        if previous is not None:
            model, _ = load_causal_lm(str(previous), device=config.device)
            disable_dropout(model)
    sharded = config.fsdp and distributed.world_size() > 1
    if sharded:  # in place, before PPO builds its optimizer over the policy's parameters
        distributed.shard_per_layer(model)
        distributed.shard_per_layer(reference)
    env = TextGenerationVectorEnv(
        config.batch_size,
        tokenizer=tokenizer,
        prompts=prompt_set.prompts,
        reward_fn=reward,
        max_new_tokens=config.max_new_tokens,
        max_prompt_tokens=config.max_prompt_tokens,
        missing_eos_penalty=config.missing_eos_penalty,
        device=config.device,
    )
    policy = LMActorCriticPolicy(
        model=model,
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=config.max_prompt_tokens,
        sampling=SamplingConfig(temperature=config.temperature),
        eos_token_id=tokenizer.eos_token_id,
        reference_model=reference,
    ).to(config.device)
    algorithm = build_ppo(
        config, policy, distributed.all_reduce_sum if distributed.world_size() > 1 else None
    )
    collector = TextCollector(algorithm, env, synced=sharded)
    writer = (
        SummaryWriter(str(config.output_dir / "tensorboard"))
        if distributed.is_main_process()
        else None
    )
    return _Run(
        config,
        model,
        tokenizer,
        policy,
        algorithm,
        env,
        collector,
        reward,
        prompt_set,
        writer,
        sharded,
    )


def _rollout_metrics(run: _Run, stats: PPOTrainingStats, lengths: np.ndarray) -> dict[str, float]:
    """The iteration's objective/*, policy/* and episode metrics (TensorBoard names)."""
    metrics = {
        "objective/rlhf_reward": float(np.mean(run.reward.scores)),
        "objective/kl": float("nan") if stats.sequence_kl is None else stats.sequence_kl,
        "objective/kl_coef": stats.kl_coef,
        "policy/clipfrac": stats.clip_fraction,
        "policy/approxkl": stats.approx_kl,
        "policy/entropy": stats.entropy,
        "value/loss": stats.value_loss,
        "value/explained_variance": stats.explained_variance,
        "episode/response_length": float(lengths.mean()),
        "episode/eos_rate": float(np.mean([r != run.config.max_new_tokens for r in lengths])),
    }
    tasks = run.prompt_set.tasks
    if tasks is not None:
        gold = [
            gold_value(judge(tasks[p], r), category_of(tasks[p].is_safety))
            for p, r in zip(run.reward.prompts, run.reward.responses, strict=True)
        ]
        metrics["objective/gold_reward"] = float(np.mean(gold))
    return metrics


def _samples(run: _Run, count: int = 8) -> list[dict[str, str]]:
    """Greedy responses to the first evaluation (or training) prompts."""
    tasks = run.prompt_set.evaluation_tasks
    prompts = [t.prompt for t in tasks[:count]] if tasks else run.prompt_set.prompts[:count]
    responses = generate_responses(
        run.model, run.tokenizer, prompts, GREEDY, run.config.max_new_tokens, synced=run.sharded
    )
    return [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]


def _gold_evaluation(run: _Run) -> dict[str, float]:
    """Gold helpfulness/safety and proxy reward of greedy responses on the validation split.

    Rank 0 records it; a sharded policy needs every rank to run it too, the others only
    wait at the next collective."""
    tasks = run.prompt_set.evaluation_tasks
    if not tasks:
        return {}
    prompts = [t.prompt for t in tasks]
    responses = generate_responses(
        run.model, run.tokenizer, prompts, GREEDY, run.config.max_new_tokens, synced=run.sharded
    )
    gold = evaluate_responses(tasks, responses)
    proxy = run.reward.reward(prompts, responses)
    return {
        "eval/gold_helpfulness": gold.mean_helpfulness,
        "eval/gold_safety": gold.mean_safety,
        "eval/refusal_rate_on_safe": gold.refusal_rate_on_safe,
        "eval/correct_rate_on_safe": gold.correct_rate_on_safe,
        "eval/false_refusal_rate": gold.false_refusal_rate,
        "eval/violation_rate": gold.violation_rate,
        "eval/rlhf_reward": float(np.mean(proxy)),
    }


def _save(run: _Run, iteration: int, state: dict[str, object]) -> Path:
    """Rank 0 writes ``checkpoint-<iteration>``; every rank returns its path once it exists.
    Sharded weights are gathered to rank 0 first (a collective: every rank calls this)."""
    target = run.config.output_dir / f"{CHECKPOINT_PREFIX}{iteration:06d}"
    weights = distributed.full_state_dict(run.model) if run.sharded else None
    if distributed.is_main_process():
        model = _merged_copy(run.model)
        save_checkpoint(run.config.output_dir, iteration, model, run.tokenizer, state, weights)
        if model is not run.model:  # LoRA: the adapter too, to resume with the base as reference
            run.model.save_pretrained(target / ADAPTER_DIRECTORY)
    distributed.barrier()
    return target


def train_rlhf_ppo(
    config: RLHFConfig,
    stop_after_iterations: int | None = None,
    reward: RewardFunction | None = None,
) -> RLHFResult:
    """Train (or resume) a PPO run; ``stop_after_iterations`` ends early, as a kill would.

    ``reward`` replaces the reward models with any ``reward(prompts, responses)`` callable.
    Under ``torchrun`` every rank collects its own ``batch_size`` episodes; whitening, the
    KL controller and the gradients are reduced over all ranks (``agents.PPO``'s
    ``reduce_sum``), and rank 0 alone records evaluations, logs and writes checkpoints.
    """
    context = distributed.setup(config.device)
    config = dataclasses.replace(config, device=str(context.device))
    config.output_dir.mkdir(parents=True, exist_ok=True)
    previous = checkpoints(config.output_dir)
    run = _build_run(config, previous[-1] if previous else None, reward)
    start, history, samples_before = 0, [], []
    if previous:
        state = torch.load(previous[-1] / STATE_FILE, weights_only=False)
        run.policy.value_head.load_state_dict(state["value_head"])
        distributed.load_optimizer_state(
            run.policy, run.algorithm.torch_optimizer, state["optimizer"]
        )
        if run.algorithm.adaptive_kl is not None:
            run.algorithm.adaptive_kl.value = state["kl_coef"]
        start, history, samples_before = state["iteration"], state["history"], state["samples"]
        logger.info("resuming from %s (iteration %d)", previous[-1], start)
    else:
        samples_before = _samples(run)
        evaluation = _gold_evaluation(run) if context.is_main_process or run.sharded else {}
        history.append({"iteration": 0, "objective/kl": 0.0, **evaluation})
    checkpoint = previous[-1] if previous else None
    progress = tqdm(
        range(start, config.iterations),
        desc="PPO",
        unit="iter",
        initial=start,
        total=config.iterations,
        disable=not context.is_main_process,
    )
    for iteration in progress:
        if stop_after_iterations is not None and iteration - start >= stop_after_iterations:
            break
        torch.manual_seed(distributed.rank_seed(config.seed * 1_000_003 + iteration))
        run.env.np_random = np.random.default_rng([config.seed, iteration, context.rank])
        run.reward.clear()
        run.collector.reset_buffer()
        timer = time.perf_counter()
        with policy_within_training_step(run.policy):  # sample (not greedy), then learn
            collected = run.collector.collect(n_episode=config.batch_size)
            generation_seconds = time.perf_counter() - timer
            timer = time.perf_counter()
            stats = run.algorithm.update(
                run.collector.buffer,
                batch_size=config.minibatch_size * config.max_new_tokens,
                repeat=config.epochs,
            )
            update_seconds = time.perf_counter() - timer
        lengths = np.asarray(collected.lens)
        metrics = {
            "iteration": iteration + 1,
            **_rollout_metrics(run, stats, lengths),
            "speed/generation_tokens_per_s": float(lengths.sum()) / generation_seconds,
            "speed/update_tokens_per_s": float(lengths.sum()) * config.epochs / update_seconds,
        }
        last = iteration + 1 == config.iterations
        evaluates = context.is_main_process or run.sharded
        if evaluates and (last or (iteration + 1) % config.eval_every == 0):
            metrics.update(_gold_evaluation(run))
        history.append(metrics)
        if run.writer is not None:
            for name, value in metrics.items():
                if name != "iteration":
                    run.writer.add_scalar(name, value, iteration + 1)
        progress.set_postfix(
            reward=f"{metrics['objective/rlhf_reward']:.2f}", kl=f"{metrics['objective/kl']:.2f}"
        )
        if last or (iteration + 1) % config.save_every == 0:
            checkpoint = _save(
                run,
                iteration + 1,
                {
                    "iteration": iteration + 1,
                    "value_head": run.policy.value_head.state_dict(),
                    "optimizer": distributed.full_optimizer_state(  # sharded: a collective
                        run.policy, run.algorithm.torch_optimizer
                    ),
                    "kl_coef": run.algorithm.adaptive_kl.value
                    if run.algorithm.adaptive_kl is not None
                    else config.kl_coef,
                    "history": history,
                    "samples": samples_before,
                    "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
                },
            )
    if run.writer is not None:
        run.writer.close()
    if checkpoint is None:
        raise RuntimeError("no iteration ran and no checkpoint exists")
    return RLHFResult(checkpoint, history, samples_before, _samples(run))


def write_rlhf_report(config: RLHFConfig, result: RLHFResult) -> Path:
    """Markdown + PNG: gold and proxy reward against KL (Gao et al.), the metric table per
    iteration, and greedy samples before and after."""
    rows = [h for h in result.history if "objective/rlhf_reward" in h]
    figures = {}
    if rows and "objective/gold_reward" in rows[0]:
        figures["reward_vs_kl"] = reward_vs_kl_figure(
            [h["objective/kl"] for h in rows],
            [h["objective/gold_reward"] for h in rows],
            [h["objective/rlhf_reward"] for h in rows],
        )
    columns = [
        ("iteration", "iteration"),
        ("objective/kl", "KL (nats/response)"),
        ("objective/kl_coef", "beta"),
        ("objective/rlhf_reward", "proxy reward"),
        ("objective/gold_reward", "gold reward"),
        ("episode/response_length", "length"),
        ("eval/gold_helpfulness", "eval gold helpfulness"),
        ("eval/gold_safety", "eval gold safety"),
        ("eval/rlhf_reward", "eval proxy reward"),
    ]
    present = [(key, name) for key, name in columns if any(key in h for h in result.history)]
    table = markdown_table(
        [name for _, name in present],
        [[h.get(key, "") for key, _ in present] for h in result.history],
    )
    samples = markdown_table(
        ["prompt", "before (SFT)", "after (PPO)"],
        [
            [b["prompt"], b["response"], a["response"]]
            for b, a in zip(result.samples_before, result.samples_after, strict=True)
        ],
    )
    sections = [
        f"Policy `{config.policy}`, "
        + (
            "reward: the world's gold judges"
            if config.gold_reward
            else f"reward models `{config.helpfulness_rm}`"
            + (f" and `{config.safety_rm}`" if config.safety_rm else "")
        )
        + f"; {config.iterations} iterations of {config.batch_size} episodes, "
        f"checkpoint `{result.checkpoint}`.",
        "Rollout rewards are means over the iteration's sampled responses (temperature "
        f"{config.temperature}); eval columns are greedy responses on the validation split. "
        "KL is the per-response KL to the initial policy, summed over tokens.\n\n" + table,
        "Greedy samples:\n\n" + samples,
    ]
    return write_report(config.output_dir, "RLHF with PPO", sections, figures)
