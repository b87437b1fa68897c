"""The ``textrl`` command line: the synthetic world's data and its gold evaluation.

textrl world --out data/world                       # prompts and SFT demonstrations
textrl collect-preferences --model ckpt --pairs 10000 --out prefs.jsonl
textrl annotate --model ckpt --pairs 50 --out my_labels.jsonl
textrl evaluate --model ckpt --against sft_ckpt --split test
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from textrl.jsonl import DataFormatError, write_jsonl_atomically
from textrl.models import load_causal_lm
from textrl.world.annotator import SimulatedAnnotator
from textrl.world.demonstrations import write_demonstrations
from textrl.world.evaluation import evaluate_model, evaluation_table
from textrl.world.human_annotation import annotate, write_pairs_file
from textrl.world.pair_sampling import Variant, sample_pairs
from textrl.world.preferences import annotate_pairs, write_preferences
from textrl.world.splits import SPLIT_FRACTIONS, split_tasks


def _world(args: argparse.Namespace) -> None:
    for split in SPLIT_FRACTIONS:
        tasks = split_tasks(split, args.seed)
        write_jsonl_atomically(
            args.out / f"{split}.prompts.jsonl",
            ({"prompt": t.prompt, "family": t.family, "is_safety": t.is_safety} for t in tasks),
        )
        write_demonstrations(args.out / f"{split}.demonstrations.jsonl", tasks)
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
    labelled = annotate_pairs(
        pairs.tasks,
        pairs.first,
        pairs.second,
        pairs.first_variant,
        pairs.second_variant,
        SimulatedAnnotator(args.noise, args.seed),
    )
    write_preferences(args.out, labelled)
    print(
        json.dumps(
            {
                "pairs": len(labelled),
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


def _sampling_arguments(parser: argparse.ArgumentParser, pairs: bool) -> None:
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        help="checkpoint (HF directory, .gguf or 'smollm2'); repeat for several",
    )
    parser.add_argument("--split", default="train", choices=sorted(SPLIT_FRACTIONS))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textrl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    world = commands.add_parser("world", help="write the world's prompts and SFT demonstrations")
    world.add_argument("--out", type=Path, required=True)
    world.add_argument("--seed", type=int, default=0)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DataFormatError, FileNotFoundError, ValueError) as error:
        print(f"textrl {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
