"""The ``textrl`` command line: the synthetic world, its gold evaluation, SFT, reward models, PPO.

textrl world --out data/world                       # prompts and SFT demonstrations
textrl collect-preferences --model ckpt --pairs 10000 --out prefs.jsonl
textrl annotate --model ckpt --pairs 50 --out my_labels.jsonl
textrl evaluate --model ckpt --against sft_ckpt --split test
textrl sft --model base --data data/world/sft.demonstrations.jsonl --out runs/sft
textrl rm --policy runs/sft/checkpoint-000120 --train prefs.jsonl --out runs/rm_help
textrl ppo --policy runs/sft/checkpoint-000120 --helpfulness-rm runs/rm_help/checkpoint-000060 \\
    --safety-rm runs/rm_safety/checkpoint-000060 --out runs/ppo
textrl rs --policy ckpt --helpfulness-rm rm_help --safety-rm rm_safety --out runs/rs
textrl pipeline [--config pipeline.toml]            # all of it, rounds V1..Vn, and a report
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import sys
import time
from pathlib import Path

from textrl import distributed
from textrl.jsonl import DataFormatError, write_jsonl_atomically
from textrl.models import load_causal_lm
from textrl.pipeline import load_pipeline_config, run_pipeline, stages
from textrl.reports import accuracy_figure, loss_figure, write_report
from textrl.reward_model import (
    RewardModelConfig,
    accuracy_by_rating,
    accuracy_table,
    likelihood_accuracy_by_rating,
    load_reward_model,
    train_reward_model,
)
from textrl.rlhf_ppo import PRESETS, RLHFConfig, train_rlhf_ppo, write_rlhf_report
from textrl.sft import SFTConfig, train_sft
from textrl.world.annotator import RATINGS, SimulatedAnnotator
from textrl.world.demonstrations import (
    CAUTIOUS_WRITERS,
    WORDY_WRITERS,
    WRITERS,
    write_demonstrations,
)
from textrl.world.evaluation import evaluate_model, evaluation_table
from textrl.world.human_annotation import annotate, write_pairs_file
from textrl.world.pair_sampling import Variant, sample_pairs
from textrl.world.preferences import annotate_sampled, read_preferences, write_preferences
from textrl.world.splits import SPLITS, split_tasks


def _world(args: argparse.Namespace) -> None:
    for split in SPLITS:
        tasks = split_tasks(split, args.seed)
        write_jsonl_atomically(
            args.out / f"{split}.prompts.jsonl",
            ({"prompt": t.prompt, "family": t.family, "is_safety": t.is_safety} for t in tasks),
        )
        write_demonstrations(
            args.out / f"{split}.demonstrations.jsonl",
            tasks,
            args.cautious_writers,
            args.wordy_writers,
        )
        print(
            f"{split}: {len(tasks)} prompts -> {args.out}/{split}.prompts.jsonl, "
            f"{split}.demonstrations.jsonl"
        )


def _variants(args: argparse.Namespace) -> list[Variant]:
    variants = []
    for path in args.model:
        model, tokenizer = load_causal_lm(path, device=args.device)
        variants += [
            Variant(f"{Path(path).name}@T{t:g}", model, tokenizer, t) for t in args.temperatures
        ]
    return variants


def _sampled_pairs(args: argparse.Namespace):
    return sample_pairs(
        _variants(args),
        split_tasks(args.split, args.split_seed),
        args.pairs,
        args.seed,
        args.max_new_tokens,
        args.batch_size,
        progress=True,
    )


def _collect_preferences(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    pairs = _sampled_pairs(args)
    labelled = annotate_sampled(pairs, SimulatedAnnotator(args.noise, args.seed))
    write_preferences(args.out, labelled)
    print(
        json.dumps(
            {
                "pairs": len(labelled),
                "identical_dropped": args.pairs - len(labelled),
                "out": str(args.out),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    )


def _annotate(args: argparse.Namespace) -> None:
    pairs_path = args.out.with_name(args.out.name + ".pairs.jsonl")
    if not pairs_path.exists():
        write_pairs_file(pairs_path, _sampled_pairs(args))
    annotate(pairs_path, args.out)


def _evaluate(args: argparse.Namespace) -> None:
    tasks = split_tasks(args.split, args.split_seed)
    model, tokenizer = load_causal_lm(args.model[0], device=args.device)
    opponent = load_causal_lm(args.against, device=args.device) if args.against else None
    result = evaluate_model(model, tokenizer, tasks, opponent, max_new_tokens=args.max_new_tokens)
    print(evaluation_table({Path(args.model[0]).name: result}))
    if args.json:
        print(json.dumps(result.__dict__))


def _sft(args: argparse.Namespace) -> None:
    config = SFTConfig(
        model=args.model,
        data=args.data,
        output_dir=args.out,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        gradient_accumulation=args.gradient_accumulation,
        sequence_length=args.sequence_length,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        fsdp=args.fsdp,
        seed=args.seed,
        device=args.device,
    )
    result = train_sft(config)
    summary = (
        f"Model `{args.model}`, data `{args.data}`, {result.steps} steps, "
        f"{result.tokens_per_second:.0f} trained tokens/s, final loss {result.losses[-1]:.4f}."
        if result.losses
        else "No step was run: the run had already finished."
    )
    figure = loss_figure(result.losses, "SFT loss (answer tokens)", result.steps)
    report = write_report(args.out, "SFT", [summary], {"loss": figure})
    print(f"report: {report}")
    print(
        json.dumps(
            {
                "checkpoint": str(result.checkpoint),
                "steps": result.steps,
                "final_loss": result.losses[-1] if result.losses else None,
                "tokens_per_second": round(result.tokens_per_second, 1),
            }
        )
    )


def _reward_model(args: argparse.Namespace) -> None:
    config = RewardModelConfig(
        policy=args.policy,
        train=args.train,
        output_dir=args.out,
        category=args.category,
        margin=args.margin,
        epochs=args.epochs,
        center_coefficient=args.center_coefficient,
        other_category_share=args.other_category_share,
        probe_head=args.probe_head,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        seed=args.seed,
        device=args.device,
        fsdp=args.fsdp,
        bf16=args.bf16,
    )
    result = train_reward_model(config)
    model, tokenizer = load_reward_model(result.checkpoint, args.device)
    model.eval()
    policy, policy_tokenizer = load_causal_lm(args.policy, device=args.device)
    accuracies = {}
    for path in [args.train, *args.evaluate]:
        pairs = [p for p in read_preferences(path) if p.category == args.category]
        accuracies[Path(path).name] = accuracy_by_rating(model, tokenizer, pairs)
        accuracies[f"{Path(path).name}: policy likelihood"] = likelihood_accuracy_by_rating(
            policy, policy_tokenizer, pairs
        )
    table = accuracy_table(accuracies)
    report = write_report(
        args.out,
        f"Reward model ({args.category}, {args.margin} margin)",
        [
            f"Initialised from `{args.policy}`, trained on `{args.train}`.",
            "Accuracy (share of pairs where r(chosen) > r(rejected)); the policy-likelihood "
            "columns rank by log pi(response | prompt) of the initial policy, untrained, the "
            "baseline the reward model should beat:\n\n" + table,
        ],
        {
            "loss": loss_figure(result.losses, "ranking loss", result.steps),
            "accuracy": accuracy_figure(accuracies, [*RATINGS, "overall"]),
        },
    )
    print(table)
    print(f"report: {report}")
    print(json.dumps({"checkpoint": str(result.checkpoint), "accuracy": accuracies}))


_PPO_OVERRIDES = {
    "iterations": int,
    "batch_size": int,
    "minibatch_size": int,
    "gradient_accumulation": int,
    "epochs": int,
    "learning_rate": float,
    "kl_coef": float,
    "target_kl": float,
    "temperature": float,
    "max_new_tokens": int,
    "lora_rank": int,
    "missing_eos_penalty": float,
    "eval_every": int,
    "save_every": int,
}


def _ppo(args: argparse.Namespace) -> None:
    overrides = {name: getattr(args, name) for name in _PPO_OVERRIDES}
    config = RLHFConfig.from_preset(
        args.preset,
        policy=args.policy,
        helpfulness_rm=args.helpfulness_rm,
        safety_rm=args.safety_rm,
        output_dir=args.out,
        prompts=args.prompts,
        kl_estimator=args.kl_estimator,
        whiten_rewards=args.whiten_rewards,
        greedy_baseline=args.greedy_baseline,
        gold_reward=args.gold_reward,
        fsdp=args.fsdp,
        seed=args.seed,
        device=args.device,
        **{name: value for name, value in overrides.items() if value is not None},
    )
    result = train_rlhf_ppo(config)
    if not distributed.is_main_process():
        return
    report = write_rlhf_report(config, result)
    print(f"report: {report}")
    print(json.dumps({"checkpoint": str(result.checkpoint), "final": result.history[-1]}))


def _rejection_sampling(args: argparse.Namespace) -> None:
    """One rejection-sampling round of the pipeline (its config's ``rejection_sampling``
    section), from a policy and reward models to a checkpoint; runs under torchrun too."""
    config = load_pipeline_config(args.config)
    if args.device is not None:
        config = dataclasses.replace(config, device=args.device)
    if args.fsdp:
        config = dataclasses.replace(config, fsdp=True)
    distributed.setup(config.device)
    reward_models = {
        "helpfulness": {"checkpoint": args.helpfulness_rm},
        "safety": {"checkpoint": args.safety_rm},
    }
    reward = stages.combined_reward(config, reward_models, args.policy)
    args.out.mkdir(parents=True, exist_ok=True)
    result = stages.rejection_sampling_stage(
        config, args.round, args.policy, reward, args.kept, args.out
    )
    print(json.dumps(result))


def _pipeline(args: argparse.Namespace) -> None:
    config = load_pipeline_config(args.config)
    if args.out is not None:
        config = dataclasses.replace(config, output_dir=args.out)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.fsdp:
        config = dataclasses.replace(config, fsdp=True)
    summary = run_pipeline(config)
    print(f"report: {summary['report']}")
    print(json.dumps(summary))


def _sampling_arguments(parser: argparse.ArgumentParser, pairs: bool) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="checkpoint (HF directory, .gguf or 'smollm2'); repeat for several",
    )
    parser.add_argument("--split", default="rlhf", choices=SPLITS)
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the world's splits")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--device", default="cpu")
    if pairs:
        parser.add_argument("--pairs", type=int, default=1000)
        parser.add_argument(
            "--temperatures",
            type=lambda s: [float(t) for t in s.split(",")],
            default=[0.7, 1.2],
            help="comma list; each (model, T) is a variant",
        )
        parser.add_argument("--batch-size", type=int, default=256)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--out", type=Path, required=True)


FSDP_HELP = "under torchrun, shard the model over ranks (FSDP2) instead of copying it (DDP)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textrl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    world = commands.add_parser("world", help="write the world's prompts and SFT demonstrations")
    world.add_argument("--out", type=Path, required=True)
    world.add_argument("--seed", type=int, default=0)
    world.add_argument(
        "--cautious-writers",
        type=int,
        default=CAUTIOUS_WRITERS,
        help=f"of the {WRITERS} writers of each borderline prompt, those who refuse it",
    )
    world.add_argument(
        "--wordy-writers",
        type=int,
        default=WORDY_WRITERS,
        help=f"of the {WRITERS} writers of each harmless prompt, those who pad the answer",
    )
    world.set_defaults(run=_world)
    collect = commands.add_parser(
        "collect-preferences",
        help="sample pairs, label them with the simulated annotator, write preference JSONL",
    )
    _sampling_arguments(collect, pairs=True)
    collect.add_argument("--noise", type=float, default=0.1, help="annotator Bradley-Terry noise")
    collect.set_defaults(run=_collect_preferences)
    human = commands.add_parser("annotate", help="label pairs yourself in the terminal (resumable)")
    _sampling_arguments(human, pairs=True)
    human.set_defaults(run=_annotate)
    evaluate = commands.add_parser("evaluate", help="gold helpfulness/safety of a checkpoint")
    _sampling_arguments(evaluate, pairs=False)
    evaluate.add_argument("--against", help="checkpoint to compute the win rate against")
    evaluate.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    evaluate.set_defaults(run=_evaluate)
    sft = commands.add_parser("sft", help="supervised fine-tuning on prompt/answer JSONL")
    sft.add_argument("--model", required=True, help="HF directory, .gguf or 'smollm2'")
    sft.add_argument(
        "--data",
        type=Path,
        required=True,
        help="JSONL of prompt/answer, messages or text (plain language modelling) records",
    )
    sft.add_argument("--out", type=Path, required=True)
    sft.add_argument("--epochs", type=int, default=2)
    sft.add_argument("--learning-rate", type=float, default=2e-5)
    sft.add_argument("--batch-size", type=int, default=8)
    sft.add_argument("--gradient-accumulation", type=int, default=1)
    sft.add_argument("--sequence-length", type=int, default=256)
    sft.add_argument("--gradient-checkpointing", action="store_true")
    sft.add_argument("--bf16", action="store_true")
    sft.add_argument("--fsdp", action="store_true", help=FSDP_HELP)
    sft.add_argument("--seed", type=int, default=0)
    sft.add_argument("--device", default="cpu")
    sft.set_defaults(run=_sft)
    reward = commands.add_parser("rm", help="train a reward model on preference JSONL")
    reward.add_argument("--policy", required=True, help="checkpoint that initialises the RM")
    reward.add_argument("--train", type=Path, required=True)
    reward.add_argument(
        "--evaluate",
        type=Path,
        nargs="*",
        default=[],
        help="preference files to report accuracy on (validation, test)",
    )
    reward.add_argument("--category", choices=["helpfulness", "safety"], default="helpfulness")
    reward.add_argument("--margin", choices=["none", "small", "large"], default="small")
    reward.add_argument("--epochs", type=int, default=1)
    reward.add_argument(
        "--center-coefficient",
        type=float,
        default=0.0,
        help="weight of mean((r_chosen + r_rejected)^2), which pulls per-prompt offsets to 0",
    )
    reward.add_argument(
        "--other-category-share",
        type=float,
        default=0.0,
        help="share of pairs from the other category (Llama 2's safety model: 0.1 helpfulness)",
    )
    reward.add_argument(
        "--probe-head",
        action="store_true",
        help="fit the scalar head to the frozen backbone before fine-tuning (LP-FT)",
    )
    reward.add_argument("--learning-rate", type=float, default=1e-5)
    reward.add_argument("--batch-size", type=int, default=16)
    reward.add_argument("--out", type=Path, required=True)
    reward.add_argument("--seed", type=int, default=0)
    reward.add_argument("--device", default="cpu")
    reward.add_argument("--fsdp", action="store_true", help=FSDP_HELP)
    reward.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the scores")
    reward.set_defaults(run=_reward_model)
    ppo = commands.add_parser("ppo", help="RLHF: PPO from an SFT checkpoint and reward models")
    ppo.add_argument("--policy", required=True, help="SFT checkpoint (initial policy, reference)")
    rewards = ppo.add_mutually_exclusive_group(required=True)
    rewards.add_argument("--helpfulness-rm", help="helpfulness reward-model checkpoint")
    rewards.add_argument(
        "--gold-reward",
        action="store_true",
        help="score with the world's gold judges instead (the upper bound of a reward model)",
    )
    ppo.add_argument("--safety-rm", help="with it, Llama 2's gated combined reward")
    ppo.add_argument("--out", type=Path, required=True)
    ppo.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ppo.add_argument(
        "--prompts", type=Path, help="prompt JSONL (default: the world's RLHF prompts)"
    )
    for name, kind in _PPO_OVERRIDES.items():
        ppo.add_argument("--" + name.replace("_", "-"), type=kind, help="overrides the preset")
    ppo.add_argument("--kl-estimator", choices=["k1", "k3"], default="k1")
    ppo.add_argument("--whiten-rewards", action="store_true")
    ppo.add_argument(
        "--greedy-baseline",
        action="store_true",
        help="subtract each prompt's reward of the initial greedy response (ReMax)",
    )
    ppo.add_argument("--fsdp", action="store_true", help=FSDP_HELP)
    ppo.add_argument("--seed", type=int, default=0)
    ppo.add_argument("--device", default="cpu")
    ppo.set_defaults(run=_ppo)
    rs = commands.add_parser(
        "rs", help="one rejection-sampling round: best of K by the reward models, fine-tuned"
    )
    rs.add_argument("--policy", required=True, help="checkpoint to sample from and fine-tune")
    rs.add_argument("--helpfulness-rm", required=True)
    rs.add_argument("--safety-rm", required=True)
    rs.add_argument("--out", type=Path, required=True)
    rs.add_argument(
        "--config", type=Path, help="pipeline TOML whose [rejection_sampling] settings to use"
    )
    rs.add_argument("--round", type=int, default=1, help="round number (seeds, checkpoint name)")
    rs.add_argument("--kept", type=Path, help="an earlier round's kept_episodes.pt to build on")
    rs.add_argument("--device", help="overrides the config's device")
    rs.add_argument("--fsdp", action="store_true", help=FSDP_HELP)
    rs.set_defaults(run=_rejection_sampling)
    pipeline = commands.add_parser(
        "pipeline", help="the whole Llama 2 recipe: SFT, RMs, rounds of RS and PPO, report"
    )
    pipeline.add_argument(
        "--config", type=Path, help="TOML config (default: the embedded tiny-model config)"
    )
    pipeline.add_argument("--out", type=Path, help="overrides the config's output_dir")
    pipeline.add_argument("--seed", type=int, help="overrides the config's seed")
    pipeline.add_argument("--fsdp", action="store_true", help=FSDP_HELP)
    pipeline.set_defaults(run=_pipeline)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    # under torchrun every rank runs this command; rank 0 alone reports
    quiet = (
        contextlib.redirect_stdout(io.StringIO())
        if os.environ.get("RANK", "0") != "0"
        else (contextlib.nullcontext())
    )
    try:
        with quiet:
            args.run(args)
    except (DataFormatError, FileNotFoundError, ValueError) as error:
        print(f"textrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    # after a failure a peer may still be inside a collective: leave the group only on success
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
