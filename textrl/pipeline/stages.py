"""The stages of the Llama 2 post-training pipeline, each a function from files to files.

(Tiny model: pretraining on the world's corpus ->) SFT -> (per round) fresh
preferences from the latest models -> helpfulness and safety reward models on all
preferences so far -> rejection sampling (every round) -> PPO on top of the
rejection-sampled model, then safety DPO (last round). Every stage
reads its inputs from checkpoints on disk and returns a JSON-serialisable
result, so the runner can record it and a resumed pipeline skips it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tianshou.algorithm.optim import TorchOptimizerFactory
from tianshou.utils.torch_utils import policy_within_training_step
from torch.utils.tensorboard import SummaryWriter
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.episode_buffer import EpisodeBuffer
from agents.lm_policy import LMActorCriticPolicy
from agents.rejection_sampling import KeptEpisode, RejectionSampling
from agents.text_collector import TextCollector
from envs.text_generation import RewardFunction, TextGenerationVectorEnv, prompt_fingerprint
from textrl import distributed
from textrl.checkpoint import save_atomically
from textrl.combined_reward import CombinedReward
from textrl.generation import generate_responses
from textrl.jsonl import write_jsonl_atomically
from textrl.models import disable_dropout, load_causal_lm, tiny_llama
from textrl.optim import ADAM_BETAS, ADAM_EPS
from textrl.pipeline.config import PipelineConfig
from textrl.preference_optimization import DPOConfig, best_against_worst_pairs, train_dpo
from textrl.reward_model import (
    RewardModelConfig,
    accuracy_by_rating,
    likelihood_accuracy_by_rating,
    load_reward_model,
    train_reward_model,
)
from textrl.rlhf_ppo import RLHFConfig, train_rlhf_ppo
from textrl.sampling import SamplingConfig
from textrl.sft import SFTConfig, checkpoint_path, save_checkpoint, train_sft
from textrl.tokenization import build_char_tokenizer
from textrl.world import red_team
from textrl.world.annotator import SimulatedAnnotator, bayes_accuracy
from textrl.world.corpus import write_corpus
from textrl.world.demonstrations import write_demonstrations
from textrl.world.evaluation import GREEDY, evaluate_responses, sampled_gold
from textrl.world.pair_sampling import Variant, sample_pairs
from textrl.world.preferences import (
    PreferencePair,
    annotate_sampled,
    gold_gaps,
    read_preferences,
    write_preferences,
)
from textrl.world.splits import split_tasks
from textrl.world.tasks import Task, all_tasks

CATEGORIES = ("helpfulness", "safety")
KEPT_FILE = "kept_episodes.pt"
CALIBRATION_PROMPTS = 256


def world_stage(config: PipelineConfig, directory: Path) -> dict[str, object]:
    """The world's prompts and SFT demonstrations per split."""
    counts = {}
    for split in ("sft", "validation", "test"):
        tasks = split_tasks(split, config.seed)
        write_demonstrations(
            directory / f"{split}.demonstrations.jsonl",
            tasks,
            config.sft.cautious_writers,
            config.sft.wordy_writers,
        )
        counts[split] = len(tasks)
    return {"prompts": counts}


def base_model_stage(config: PipelineConfig, directory: Path) -> dict[str, object]:
    """The model SFT starts from: a fresh tiny Llama (char tokenizer), or a given checkpoint."""
    if config.model.base != "tiny":
        return {"checkpoint": config.model.base}
    tokenizer = build_char_tokenizer()
    model = tiny_llama(
        tokenizer,
        config.model.hidden_size,
        config.model.num_layers,
        config.model.num_heads,
        seed=config.seed,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return {"checkpoint": str(directory), "parameters": sum(p.numel() for p in model.parameters())}


def pretraining_stage(config: PipelineConfig, base: str, directory: Path) -> dict[str, object]:
    """Language modelling on the world's corpus (``textrl.world.corpus``), from ``base``."""
    settings = config.pretraining
    corpus = directory / "corpus.jsonl"
    documents = write_corpus(corpus, settings.words, config.seed)
    result = _train_language_model(
        config, base, corpus, directory, settings.epochs, settings.learning_rate
    )
    return {**result, "documents": documents}


def sft_stage(
    config: PipelineConfig, base: str, demonstrations: Path, directory: Path
) -> dict[str, object]:
    return _train_language_model(
        config, base, demonstrations, directory, config.sft.epochs, config.sft.learning_rate
    )


def _train_language_model(
    config: PipelineConfig,
    base: str,
    data: Path,
    directory: Path,
    epochs: int,
    learning_rate: float,
) -> dict[str, object]:
    """``train_sft`` over ``data`` at the SFT section's batch size and sequence length."""
    result = train_sft(
        SFTConfig(
            model=base,
            data=data,
            output_dir=directory,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=config.sft.batch_size,
            sequence_length=config.sft.sequence_length,
            save_every_steps=10**9,  # the stage is the unit of resumption
            fsdp=config.fsdp,
            gradient_checkpointing=config.sft.gradient_checkpointing,
            bf16=config.sft.bf16,
            seed=config.seed,
            device=config.device,
        )
    )
    return {"checkpoint": str(result.checkpoint), "steps": result.steps, "initialised_from": base}


def _variants(config: PipelineConfig, models: Sequence[tuple[str, str]]) -> list[Variant]:
    """Each (name, checkpoint) model at each of the configured pair temperatures."""
    variants = []
    for name, checkpoint in models:
        model, tokenizer = load_causal_lm(checkpoint, device=config.device)
        variants += [
            Variant(f"{name}@T{t:g}", model, tokenizer, t) for t in config.preferences.temperatures
        ]
    return variants


def pairs_by_category(
    config: PipelineConfig,
    models: Sequence[tuple[str, str]],
    tasks: Sequence[Task],
    helpfulness_pairs: int,
    safety_pairs: int,
    red_team_pairs: int,
    seed: int,
) -> list[PreferencePair]:
    """Helpfulness pairs on the prompts that are not safety-tagged and safety pairs on those
    that are, collected separately as Llama 2 did (safety prompts are a small share), then
    ``red_team_pairs`` on the harmful prompts (``textrl.world.red_team``); a count of 0
    skips its kind. Seeded here, so that a resumed run samples the same pairs as one that
    trained SFT in the same process."""
    torch.manual_seed(seed)
    variants = _variants(config, models)
    max_new_tokens = config.evaluation.max_new_tokens
    by_seed = {
        seed + offset: sample_pairs(
            variants,
            [t for t in tasks if t.is_safety == is_safety],
            count,
            seed + offset,
            max_new_tokens,
            progress=True,
        )
        for offset, (is_safety, count) in enumerate(
            [(False, helpfulness_pairs), (True, safety_pairs)]
        )
        if count
    }
    if red_team_pairs:
        by_seed[seed + 2] = red_team.red_team_pairs(
            variants,
            [t for t in tasks if t.family == "unsafe"],
            [t for t in tasks if t.family == "borderline"],
            red_team_pairs,
            seed + 2,
            max_new_tokens=max_new_tokens,
            progress=True,
        )
    noise = config.preferences.noise
    return [
        pair
        for key, pairs in by_seed.items()
        for pair in annotate_sampled(pairs, SimulatedAnnotator(noise, key))
    ]


def preference_seed(config: PipelineConfig, round_index: int) -> int:
    """The seed of round ``round_index``'s pairs; its train pairs use offsets 0-2 from it and
    its test pairs 5-6."""
    return config.seed * 1000 + 10 * round_index


def preferences_stage(
    config: PipelineConfig,
    round_index: int,
    models: Sequence[tuple[str, str]],
    earlier_train: Path | None,
    directory: Path,
) -> dict[str, object]:
    """Fresh train pairs from the latest models, appended to all earlier ones (Llama 2
    trained each reward model on all preference data collected so far), and test pairs."""
    settings = config.preferences
    seed = preference_seed(config, round_index)
    new = pairs_by_category(
        config,
        models,
        split_tasks("rlhf", config.seed),
        settings.pairs_per_round,
        settings.safety_pairs_per_round,
        settings.red_team_pairs_per_round,
        seed,
    )
    earlier = read_preferences(earlier_train) if earlier_train is not None else []
    write_preferences(directory / "train.jsonl", earlier + new)
    test_tasks = split_tasks("test", config.seed)
    test = pairs_by_category(
        config,
        models,
        test_tasks,
        settings.evaluation_pairs,
        settings.evaluation_pairs // 2,
        0,  # the test pairs stay the models' own, as the reward models' accuracy is read on them
        seed + 5,
    )
    write_preferences(directory / "test.jsonl", test)
    ceilings = {}
    for category in CATEGORIES:
        pairs = [p for p in test if p.category == category]
        if pairs:
            gaps = gold_gaps(pairs, test_tasks)
            ceilings[category] = bayes_accuracy(gaps, settings.noise)
    return {
        "train": str(directory / "train.jsonl"),
        "test": str(directory / "test.jsonl"),
        "train_pairs": len(earlier) + len(new),
        "bayes_ceiling": ceilings,
    }


def reward_model_config(
    config: PipelineConfig,
    category: str,
    sft_checkpoint: str,
    train: Path,
    output_dir: Path,
    epochs: int | None = None,
) -> RewardModelConfig:
    """The pipeline's reward model of ``category`` (``epochs`` overrides the config's)."""
    settings = config.reward_model
    safety = category == "safety"
    return RewardModelConfig(
        policy=sft_checkpoint,
        train=train,
        output_dir=output_dir,
        category=category,
        margin=settings.margin,
        epochs=settings.epochs if epochs is None else epochs,
        other_category_share=settings.safety_helpfulness_share if safety else 0.0,
        center_coefficient=(
            settings.safety_center_coefficient if safety else settings.center_coefficient
        ),
        probe_head=settings.probe_head,
        bf16=settings.bf16,
        fsdp=config.fsdp,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        seed=config.seed,
        device=config.device,
    )


def reward_models_stage(
    config: PipelineConfig, sft_checkpoint: str, train: Path, test: Path, directory: Path
) -> dict[str, object]:
    """Helpfulness and safety reward models, initialised from SFT, and their test accuracy
    per rating (Llama 2's Table 8), beside the accuracy of ranking by SFT's own likelihood."""
    test_pairs = read_preferences(test)
    policy, policy_tokenizer = load_causal_lm(sft_checkpoint, device=config.device)
    result: dict[str, object] = {}
    for category in CATEGORIES:
        trained = train_reward_model(
            reward_model_config(config, category, sft_checkpoint, train, directory / category)
        )
        model, tokenizer = load_reward_model(trained.checkpoint, config.device)
        model.eval()
        pairs = [p for p in test_pairs if p.category == category]
        result[category] = {
            "checkpoint": str(trained.checkpoint),
            "test_accuracy": accuracy_by_rating(model, tokenizer, pairs) if pairs else {},
            "policy_likelihood_test_accuracy": (
                likelihood_accuracy_by_rating(policy, policy_tokenizer, pairs) if pairs else {}
            ),
        }
    return result


def combined_reward(
    config: PipelineConfig,
    reward_models: dict[str, dict[str, object]],
    policy_checkpoint: str,
) -> CombinedReward:
    """The round's combined reward, whitened on the current policy's samples."""
    train = split_tasks("rlhf", config.seed)
    model, tokenizer = load_causal_lm(policy_checkpoint, device=config.device)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    return CombinedReward.calibrated_on_policy(
        str(reward_models["helpfulness"]["checkpoint"]),
        str(reward_models["safety"]["checkpoint"]),
        {t.prompt: t.is_safety for t in all_tasks()},
        (model, tokenizer),
        [train[i].prompt for i in rng.integers(0, len(train), CALIBRATION_PROMPTS)],
        SamplingConfig(temperature=1.0),
        config.evaluation.max_new_tokens,
        config.device,
    )


def sample_and_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    samples: int,
    temperature: float,
    reward: RewardFunction,
    max_new_tokens: int,
    synced: bool = False,
) -> tuple[list[list[str]], np.ndarray]:
    """``samples`` responses per prompt and their rewards ``(prompts, samples)``; ``synced``
    for a model sharded by FSDP (every rank passes as many prompts, see ``generate_responses``).
    """
    repeated = [p for p in prompts for _ in range(samples)]
    responses = generate_responses(
        model,
        tokenizer,
        repeated,
        SamplingConfig(temperature=temperature),
        max_new_tokens,
        batch_size=256,
        progress=True,
        synced=synced,
    )
    rewards = np.asarray(reward(repeated, responses)).reshape(len(prompts), samples)
    return [responses[i * samples : (i + 1) * samples] for i in range(len(prompts))], rewards


def tuned_temperature(
    config: PipelineConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    reward: RewardFunction,
    seed: int,
    synced: bool = False,
) -> tuple[float, dict[float, float]]:
    """The candidate temperature whose best of K samples has the highest mean reward on a
    seeded sample of training prompts, and each candidate's score. Every rank draws the same
    prompts, so a model sharded by FSDP decodes them ``synced`` on equal counts."""
    settings = config.rejection_sampling
    train = split_tasks("rlhf", config.seed)
    rng = np.random.default_rng(seed)
    prompts = [train[i].prompt for i in rng.integers(0, len(train), settings.temperature_prompts)]
    scores = {}
    for temperature in settings.candidate_temperatures:
        torch.manual_seed(seed)
        _, rewards = sample_and_score(
            model,
            tokenizer,
            prompts,
            settings.samples_per_prompt,
            temperature,
            reward,
            config.evaluation.max_new_tokens,
            synced,
        )
        scores[temperature] = float(rewards.max(1).mean())
    return max(scores, key=scores.get), scores


def rejection_sampling_stage(
    config: PipelineConfig,
    round_index: int,
    policy_checkpoint: str,
    reward: CombinedReward,
    earlier_kept: Path | None,
    directory: Path,
) -> dict[str, object]:
    """Best of K samples per prompt by the combined reward, kept across rounds, then
    fine-tuning the latest model on the kept responses (prompt-masked likelihood).

    Under torchrun each rank samples ``prompts_per_round / world_size`` prompts from its own
    shard of the prompts (so a prompt's kept episode lives on one rank in every round), the
    algorithm reduces its tallies and gradients over ranks, and rank 0 writes the union of
    the kept sets and the checkpoint. With ``config.fsdp`` the policy is sharded per decoder layer
    (``distributed.shard_per_layer``) and every rank decodes in lockstep.
    """
    settings = config.rejection_sampling
    epochs = settings.epochs_in_round(round_index)
    seed = config.seed * 1000 + round_index
    context = distributed.setup(config.device)
    torch.manual_seed(seed)
    model, tokenizer = load_causal_lm(policy_checkpoint, device=config.device)
    disable_dropout(model)
    sharded = config.fsdp and context.enabled
    if sharded:  # in place, before the algorithm builds its optimizer over the parameters
        distributed.shard_per_layer(model)
    prompts = [t.prompt for t in split_tasks("rlhf", config.seed)][
        context.rank :: context.world_size
    ]
    k = settings.samples_per_prompt
    prompts_per_batch = max(1, 256 // k)
    env = TextGenerationVectorEnv(
        prompts_per_batch * k,
        tokenizer=tokenizer,
        prompts=prompts,
        reward_fn=reward,
        max_new_tokens=config.evaluation.max_new_tokens,
        max_prompt_tokens=64,
        samples_per_prompt=k,
        device=config.device,
    )
    temperature, temperature_scores = tuned_temperature(
        config, model, tokenizer, reward, seed, sharded
    )
    torch.manual_seed(distributed.rank_seed(seed))  # each rank samples its own responses
    policy = LMActorCriticPolicy(
        model=model,
        observation_space=env.single_observation_space,
        action_space=env.single_action_space,
        max_prompt_tokens=64,
        sampling=SamplingConfig(temperature=temperature),
        eos_token_id=tokenizer.eos_token_id,
    )
    algorithm = RejectionSampling(
        policy=policy,
        optim=TorchOptimizerFactory(
            torch.optim.AdamW, lr=settings.learning_rate, betas=ADAM_BETAS, eps=ADAM_EPS
        ),
        samples_per_start=k,
        keep_best_of_all_rounds=settings.keep_best_of_all_rounds,
        reduce_sum=distributed.all_reduce_sum if context.enabled else None,
    )
    if earlier_kept is not None and settings.keep_best_of_all_rounds:
        mine = {np.int64(prompt_fingerprint(p)).tobytes() for p in prompts}
        earlier = torch.load(earlier_kept, weights_only=False)
        algorithm.restore_kept_episodes(
            [episode for episode in earlier if episode.start_state in mine],
            rounds_done=round_index - 1,
        )
    batches = math.ceil(settings.prompts_per_round / (prompts_per_batch * context.world_size))
    buffer = EpisodeBuffer(
        capacity=batches * prompts_per_batch * k,
        max_prompt_tokens=64,
        max_new_tokens=config.evaluation.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    collector = TextCollector(
        algorithm, env, buffer=buffer, seed=distributed.rank_seed(seed), synced=sharded
    )
    with policy_within_training_step(policy):
        collector.collect(n_episode=batches * prompts_per_batch * k)
        stats = algorithm.update(
            buffer,
            batch_size=settings.minibatch_size * config.evaluation.max_new_tokens,
            repeat=epochs,
        )
    kept = [e for part in distributed.all_gather_object(algorithm.kept_episodes) for e in part]
    checkpoint = checkpoint_path(directory, round_index)
    weights = distributed.full_state_dict(model) if sharded else None  # every rank gathers
    if context.is_main_process:
        save_atomically(kept, directory / KEPT_FILE)
        _write_kept_text(kept, tokenizer, directory / "kept.jsonl")
        state = {"round": round_index}
        save_checkpoint(directory, round_index, model, tokenizer, state, weights)
    distributed.barrier()
    result = {
        "checkpoint": str(checkpoint),
        "kept": str(directory / KEPT_FILE),
        "temperature": temperature,
        "epochs": epochs,
        "best_of_k_reward_by_temperature": temperature_scores,
        "sampled_mean_reward": stats.sampled_mean_return,
        "best_of_k_mean_reward": stats.best_of_k_mean_return,
        "kept_count": stats.kept_count,
        "kept_mean_reward": stats.kept_mean_return,
        "loss": stats.loss,
    }
    if not context.is_main_process:
        return result
    with SummaryWriter(str(directory / "tensorboard")) as writer:
        for name, value in result.items():
            if isinstance(value, float | int):
                writer.add_scalar(f"rejection_sampling/{name}", value, round_index)
        for candidate, score in temperature_scores.items():
            writer.add_scalar(
                f"rejection_sampling/best_of_k_reward_at_T{candidate:g}", score, round_index
            )
    return result


def _write_kept_text(kept: Sequence[KeptEpisode], tokenizer, path: Path) -> None:
    """The kept set, readable: prompt, best response, its reward and round."""

    def text(ids: torch.Tensor, mask: torch.Tensor) -> str:
        return tokenizer.decode(ids[mask.bool()].tolist(), skip_special_tokens=True)

    write_jsonl_atomically(
        path,
        (
            {
                "prompt": text(k.episode.prompt_ids[0], k.episode.prompt_mask[0]),
                "response": text(k.episode.response_ids[0], k.episode.mask[0]),
                "reward": k.episode_return,
                "round": k.round,
            }
            for k in kept
        ),
    )


def ppo_stage(
    config: PipelineConfig,
    round_index: int,
    policy_checkpoint: str,
    reward_models: dict[str, dict[str, object]],
    directory: Path,
) -> dict[str, object]:
    """PPO on top of the rejection-sampled model (Llama 2's last round)."""
    settings = config.ppo
    rlhf = RLHFConfig.from_preset(
        settings.preset,
        policy=policy_checkpoint,
        helpfulness_rm=str(reward_models["helpfulness"]["checkpoint"]),
        safety_rm=str(reward_models["safety"]["checkpoint"]),
        output_dir=directory,
        world_split_seed=config.seed,
        iterations=settings.iterations,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        kl_coef=settings.kl_coef,
        target_kl=settings.target_kl,
        greedy_baseline=settings.greedy_baseline,
        max_new_tokens=config.evaluation.max_new_tokens,
        eval_every=settings.iterations,
        save_every=max(1, settings.iterations // 3),
        seed=config.seed * 1000 + round_index,
        device=config.device,
        fsdp=config.fsdp,
    )
    result = train_rlhf_ppo(rlhf)
    final = result.history[-1]
    return {
        "checkpoint": str(result.checkpoint),
        "history": result.history,
        "final_kl": final["objective/kl"],
        "final_rlhf_reward": final["objective/rlhf_reward"],
    }


def red_team_prompts(preferences: Path) -> list[str]:
    """The prompts the red team attacked (a side of the pair elicited by a jailbreak), in a
    fixed order: the prompts the pipeline knows to be harmful."""
    return sorted(
        {
            p.prompt
            for p in read_preferences(preferences)
            if red_team.RED_TEAM_PREFIX in p.chosen_model + p.rejected_model
        }
    )


def safety_dpo_stage(
    config: PipelineConfig,
    round_index: int,
    policy_checkpoint: str,
    reward: CombinedReward,
    preferences: Path,
    directory: Path,
) -> dict[str, object]:
    """DPO + NLL on the policy's own samples for the red-team prompts, and DPO alone on those
    for the borderline ones: per prompt, K samples ranked by the combined reward (the safety
    score, as the prompts are safety-tagged), the best against the worst, the policy on entry
    as the reference.

    Why: rejection sampling keeps only the best sample, so it never shows the policy its rare
    compliance on a harmful prompt, and PPO samples it too seldom to push it down; the sampled
    violation rate rose through every round (docs/experiments.md, "Safety DPO"). It runs after
    PPO in the last round, and with ``every_round`` after rejection sampling in the earlier
    ones."""
    settings = config.safety_dpo
    prompts = red_team_prompts(preferences)
    if not prompts:
        raise ValueError(
            f"{preferences}: no red-team pair, so safety DPO has no prompt; set "
            "[preferences] red_team_pairs_per_round above 0 or [safety_dpo] enabled = false"
        )
    harmful = len(prompts)
    if settings.borderline_pairs_per_prompt:
        prompts += [t.prompt for t in split_tasks("rlhf", config.seed) if t.family == "borderline"]
    seed = config.seed * 1000 + 100 + round_index
    torch.manual_seed(seed)
    model, tokenizer = load_causal_lm(policy_checkpoint, device=config.device)
    disable_dropout(model)
    model.eval()
    responses, rewards = sample_and_score(
        model,
        tokenizer,
        prompts,
        settings.samples_per_prompt,
        settings.temperature,
        reward,
        config.evaluation.max_new_tokens,
    )
    harmful_pairs = best_against_worst_pairs(
        prompts[:harmful], responses[:harmful], rewards[:harmful], settings.pairs_per_prompt
    )
    borderline_pairs = best_against_worst_pairs(
        prompts[harmful:],
        responses[harmful:],
        rewards[harmful:],
        settings.borderline_pairs_per_prompt,
    )
    pairs = harmful_pairs + borderline_pairs
    if not pairs:
        raise ValueError(
            f"safety DPO: the {settings.samples_per_prompt} samples of each of {harmful} "
            f"red-team and {len(prompts) - harmful} borderline prompts tie in reward or text, "
            "so no pair can be formed"
        )
    with SummaryWriter(str(directory / "tensorboard")) as writer:
        trained = train_dpo(
            model,
            tokenizer,
            pairs,
            DPOConfig(
                beta=settings.beta,
                nll_coefficient=settings.nll_coefficient,
                learning_rate=settings.learning_rate,
                epochs=settings.epochs,
                batch_size=settings.batch_size,
                seed=seed,
            ),
            writer,
            nll_weights=[1.0] * len(harmful_pairs) + [0.0] * len(borderline_pairs),
        )
    write_jsonl_atomically(directory / "pairs.jsonl", map(dataclasses.asdict, pairs))
    checkpoint = save_checkpoint(directory, round_index, model, tokenizer, {"round": round_index})
    return {
        "checkpoint": str(checkpoint),
        "prompts": harmful,
        "borderline_prompts": len(prompts) - harmful,
        "pairs": len(pairs),
        "borderline_pairs": len(borderline_pairs),
        "mean_reward_best": float(rewards.max(1).mean()),
        "mean_reward_worst": float(rewards.min(1).mean()),
        **dataclasses.asdict(trained),
    }


def greedy_test_responses(
    config: PipelineConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> list[str]:
    prompts = [t.prompt for t in split_tasks("test", config.seed)]
    return generate_responses(model, tokenizer, prompts, GREEDY, config.evaluation.max_new_tokens)


def evaluation_stage(
    config: PipelineConfig,
    checkpoint: str,
    sft_responses: list[str] | None,
    previous_responses: list[str] | None,
) -> dict[str, object]:
    """Gold helpfulness and safety on the held-out test split (greedy), the gold win rate
    against SFT and against the previous version, and the gold of the policy's own samples
    (``sampled_gold``)."""
    tasks = split_tasks("test", config.seed)
    model, tokenizer = load_causal_lm(checkpoint, device=config.device)
    responses = greedy_test_responses(config, model, tokenizer)
    sampling = SamplingConfig(temperature=config.evaluation.sampled_gold_temperature)
    max_new_tokens = config.evaluation.max_new_tokens
    sampled = sampled_gold(
        model,
        tokenizer,
        tasks,
        config.evaluation.sampled_gold_samples,
        sampling,
        max_new_tokens,
        config.seed,
    )
    harmful = [task for task in tasks if task.family == "unsafe"]
    violations = sampled_gold(
        model,
        tokenizer,
        harmful,
        config.evaluation.violation_samples,
        sampling,
        max_new_tokens,
        config.seed,
    )
    mine = evaluate_responses(tasks, responses, sft_responses)
    against_previous = (
        evaluate_responses(tasks, responses, previous_responses).win_rate
        if previous_responses is not None
        else None
    )
    return {
        "checkpoint": checkpoint,
        "gold_helpfulness": mine.mean_helpfulness,
        "gold_safety": mine.mean_safety,
        "refusal_rate_on_safe": mine.refusal_rate_on_safe,
        "correct_rate_on_safe": mine.correct_rate_on_safe,
        "false_refusal_rate": mine.false_refusal_rate,
        "violation_rate": mine.violation_rate,
        "win_rate_vs_sft": mine.win_rate if sft_responses is not None else 0.5,
        "helpfulness_gain_vs_sft": mine.helpfulness_gain if sft_responses is not None else 0.0,
        "helpfulness_gain_se": mine.helpfulness_gain_se if sft_responses is not None else 0.0,
        "win_rate_vs_previous": against_previous,
        "sampled_gold_helpfulness": sampled.mean_helpfulness,
        "sampled_gold_safety": sampled.mean_safety,
        "sampled_violation_rate": violations.violation_rate,
        "sampled_violation_rate_se": violations.violation_rate_se,
        "sampled_helpfulness_per_prompt": sampled.helpfulness_per_prompt,
        "responses": responses,
    }


def test_prompt_sample(config: PipelineConfig, count: int) -> list[Task]:
    """A seeded subset of the test split for the report's sampling figures."""
    tasks = split_tasks("test", config.seed)
    rng = np.random.default_rng(config.seed)
    return [tasks[i] for i in rng.permutation(len(tasks))[:count]]
