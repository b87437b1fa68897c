"""Helpfulness reward-model accuracy as its training pairs grow: Llama 2's Figure 6 at small scale.

    python examples/reward_model_scaling.py --round 3 --extra-pairs 0 12000 42000 --epochs 1 2
    python examples/reward_model_scaling.py --config my_run.toml     # the config the run used
    python examples/reward_model_scaling.py --extra-pairs 0 --epochs 2 --learning-rates 1e-5 3e-5
    python examples/reward_model_scaling.py --extra-pairs 0 --epochs 1 --probe-head
    python examples/reward_model_scaling.py --extra-pairs 0 --epochs 1 2 --show-answer

Reads a finished pipeline run (the config's ``output_dir``). For round R it draws up to
``max(--extra-pairs)`` fresh helpfulness pairs the way the pipeline drew that round's
(the same models, temperatures and simulated annotator, on the ``rlhf`` prompts), from a
seed the pipeline does not use, and shuffles them. For each size in ``--extra-pairs``, each
count in ``--epochs`` and each rate in ``--learning-rates`` (default: the pipeline's) it
trains a helpfulness reward model from SFT at the pipeline's other settings (``--probe-head``
or ``--no-probe-head`` overrides the config's ``probe_head``) on the round's own
train pairs plus the share ``size / max(--extra-pairs)`` of the fresh pairs (pairs whose two
responses are the same text are dropped, as in the pipeline), and
scores it on the round's test pairs. Size 0 at the pipeline's epochs retrains the round's own
helpfulness model (the same pairs, order and seed):

- measured accuracy, as in the pipeline's Table 8;
- expected accuracy (``textrl.world.annotator.expected_accuracy``): the same in expectation
  over the annotator's noise, which compares models with less noise;
- the Bayes ceiling that the noise allows (issue 5's target: within 3 points of it);
- the expected accuracy of a judge that knows every right answer but not how near a wrong
  one is (``judge(graded=False)``), which shows how much of the ceiling lies in grading
  near misses;
- expected accuracy per task family beside the family's ceiling.

``--show-answer`` is a diagnostic, not a reward model to use: every helpfulness prompt, in
training and test, ends with the gold answer (" Answer: 12"), so the model need not know the
answer, only compare the response with it.

Writes ``reward_model_scaling/roundR/report.md`` (tables and ``scaling.png``), each reward
model's TensorBoard log under its directory, and prints one JSON object as its last line.
Llama 2 found accuracy still rising with more data at its scale; this measures where the
tiny model's stops.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from textrl.pipeline.config import load_pipeline_config
from textrl.pipeline.runner import LEDGER_FILE
from textrl.pipeline.stages import pairs_by_category, preference_seed, reward_model_config
from textrl.reports import markdown_table, write_report
from textrl.reward_model import load_reward_model, score, train_reward_model
from textrl.world.annotator import bayes_accuracy, expected_accuracy
from textrl.world.preferences import (
    PreferencePair,
    gold_gaps,
    read_preferences,
    write_preferences,
)
from textrl.world.splits import split_tasks
from textrl.world.tasks import all_tasks, demonstration

EXTRA_SEED_OFFSET = 7
"""Added to the round's ``preference_seed``: the pipeline uses
offsets 0-2 (train) and 5-6 (test), so 7 draws pairs it never drew."""
ANSWER_SHOWN = " Answer: {}"
"""What ``--show-answer`` appends to a helpfulness prompt."""
FAMILY_MINIMUM = 50
"""Families with fewer test pairs are left out of the per-family table (too noisy to read)."""


@dataclass(frozen=True)
class ScalingRow:
    train_pairs: int
    epochs: int
    learning_rate: float
    probe_head: bool
    answer_shown: bool
    accuracy: float
    expected_accuracy: float
    family_expected_accuracy: dict[str, float]
    seconds: float


def round_models(ledger: dict, round_index: int) -> list[tuple[str, str]]:
    """The models round ``round_index`` drew its pairs from, latest first: the version before
    it and the one before that (as ``textrl.pipeline.runner`` chooses them)."""
    names = ["SFT"] + [f"RLHF-V{i}" for i in range(1, round_index)]
    missing = [name for name in names if f"evaluate {name}" not in ledger]
    if missing or f"RLHF-V{round_index} preferences" not in ledger:
        raise ValueError(
            f"round {round_index} has not finished its preferences, or {missing} are not "
            f"evaluated, in this run's {LEDGER_FILE}"
        )
    models = [(name, ledger[f"evaluate {name}"]["result"]["checkpoint"]) for name in names]
    return models[::-1][:2]


def rank_test_pairs(checkpoint: Path, pairs: Sequence[PreferencePair], device: str) -> np.ndarray:
    """``score(chosen) - score(rejected)`` of each pair under the reward model."""
    model, tokenizer = load_reward_model(checkpoint, device)
    model.eval()
    with torch.no_grad():
        prompts = [p.prompt for p in pairs]
        chosen = score(model, tokenizer, prompts, [p.chosen for p in pairs])
        rejected = score(model, tokenizer, prompts, [p.rejected for p in pairs])
    return (chosen - rejected).cpu().numpy()


def with_answer_shown(pairs: Sequence[PreferencePair]) -> list[PreferencePair]:
    """Each helpfulness pair with its prompt's gold answer appended (``--show-answer``)."""
    answers = {task.prompt: demonstration(task) for task in all_tasks()}
    return [
        dataclasses.replace(p, prompt=p.prompt + ANSWER_SHOWN.format(answers[p.prompt]))
        if p.category == "helpfulness"
        else p
        for p in pairs
    ]


def scaling_figure(rows: Sequence[ScalingRow], ceiling: float, right_or_wrong: float) -> plt.Figure:
    figure, axis = plt.subplots(figsize=(6, 3.8))
    for epochs, rate in sorted({(row.epochs, row.learning_rate) for row in rows}):
        mine = [row for row in rows if (row.epochs, row.learning_rate) == (epochs, rate)]
        pairs = [row.train_pairs for row in mine]
        label = f"{epochs} epoch(s), lr {rate:g}" + (", probe head" if mine[0].probe_head else "")
        label += ", answer shown" if mine[0].answer_shown else ""
        axis.plot(pairs, [r.expected_accuracy for r in mine], "o-", label=label)
        axis.plot(pairs, [r.accuracy for r in mine], "x", color=axis.lines[-1].get_color())
    axis.axhline(ceiling, color="black", linestyle="--", label="Bayes ceiling")
    axis.axhline(ceiling - 0.03, color="gray", linestyle=":", label="ceiling - 3 points")
    axis.axhline(right_or_wrong, color="tab:red", linestyle="-.", label="right-or-wrong judge")
    axis.set_xscale("log")
    axis.set_xlabel("helpfulness train pairs")
    axis.set_ylabel("test accuracy (line: expected, x: measured)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="the run's pipeline config (default: built-in)")
    parser.add_argument("--round", type=int, default=None, help="default: the run's last round")
    parser.add_argument("--extra-pairs", type=int, nargs="+", default=[0, 12000, 42000])
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--learning-rates", type=float, nargs="+", help="default: the config's reward-model rate"
    )
    parser.add_argument(
        "--probe-head", action=argparse.BooleanOptionalAction, help="default: the config's"
    )
    parser.add_argument(
        "--show-answer", action="store_true", help="diagnostic: prompts end with the gold answer"
    )
    args = parser.parse_args(argv)
    config = load_pipeline_config(args.config)
    round_index = args.round or config.rounds
    learning_rates = args.learning_rates or [config.reward_model.learning_rate]
    probe = config.reward_model.probe_head if args.probe_head is None else args.probe_head
    run = config.output_dir
    ledger_path = run / LEDGER_FILE
    if not ledger_path.exists():
        raise SystemExit(f"{ledger_path}: no pipeline ledger; run the pipeline with this config")
    ledger = json.loads(ledger_path.read_text())
    try:
        models = round_models(ledger, round_index)
    except ValueError as error:
        raise SystemExit(f"{ledger_path}: {error}") from None
    preferences = ledger[f"RLHF-V{round_index} preferences"]["result"]
    sft = ledger["sft"]["result"]["checkpoint"]
    out = run / "reward_model_scaling" / f"round{round_index}"
    out.mkdir(parents=True, exist_ok=True)

    seed = preference_seed(config, round_index) + EXTRA_SEED_OFFSET
    extra = pairs_by_category(
        config, models, split_tasks("rlhf", config.seed), max(args.extra_pairs), 0, 0, seed
    )
    extra = [extra[i] for i in np.random.default_rng(seed).permutation(len(extra))]
    own = read_preferences(preferences["train"])
    test_tasks = split_tasks("test", config.seed)
    test = [p for p in read_preferences(preferences["test"]) if p.category == "helpfulness"]
    gaps = gold_gaps(test, test_tasks)
    noise = config.preferences.noise
    family_of = {task.prompt: task.family for task in test_tasks}
    families = np.array([family_of[p.prompt] for p in test])
    shown = [f for f in sorted(set(families)) if (families == f).sum() >= FAMILY_MINIMUM]
    ceiling = bayes_accuracy(gaps, noise)
    family_ceilings = {f: bayes_accuracy(gaps[families == f], noise) for f in shown}
    ungraded = gold_gaps(test, test_tasks, graded=False)
    right_or_wrong = expected_accuracy(gaps, ungraded, noise)
    family_right_or_wrong = {
        f: expected_accuracy(gaps[families == f], ungraded[families == f], noise) for f in shown
    }
    answer = "_answer" * args.show_answer
    shown_pairs = with_answer_shown if args.show_answer else list

    rows = []
    for draws in sorted(set(args.extra_pairs)):
        # the draws that kept both responses distinct, as the pipeline keeps them
        kept = round(len(extra) * draws / max(max(args.extra_pairs), 1))
        train = out / f"train_{draws}{answer}.jsonl"
        write_preferences(train, shown_pairs(own + extra[:kept]))
        for epochs, rate in itertools.product(args.epochs, learning_rates):
            start = time.perf_counter()
            output_dir = out / f"extra{draws}_epochs{epochs}_lr{rate:g}{'_probe' * probe}{answer}"
            settings = reward_model_config(config, "helpfulness", sft, train, output_dir, epochs)
            trained = train_reward_model(
                dataclasses.replace(settings, learning_rate=rate, probe_head=probe)
            )
            score_gaps = rank_test_pairs(trained.checkpoint, shown_pairs(test), config.device)
            rows.append(
                ScalingRow(
                    train_pairs=sum(p.category == "helpfulness" for p in own + extra[:kept]),
                    epochs=epochs,
                    learning_rate=rate,
                    probe_head=probe,
                    answer_shown=args.show_answer,
                    accuracy=float(np.mean(np.where(score_gaps == 0, 0.5, score_gaps > 0))),
                    expected_accuracy=expected_accuracy(gaps, score_gaps, noise),
                    family_expected_accuracy={
                        f: expected_accuracy(gaps[families == f], score_gaps[families == f], noise)
                        for f in shown
                    },
                    seconds=time.perf_counter() - start,
                )
            )
    overall = markdown_table(
        [
            "train pairs",
            "epochs",
            "learning rate",
            "probe head",
            "answer shown",
            "accuracy",
            "expected",
            "ceiling",
            "points under",
            "seconds",
        ],
        [
            [
                r.train_pairs,
                r.epochs,
                f"{r.learning_rate:g}",
                "yes" if r.probe_head else "no",
                "yes" if r.answer_shown else "no",
                r.accuracy,
                r.expected_accuracy,
                ceiling,
                f"{100 * (ceiling - r.accuracy):.1f}",
                f"{r.seconds:.0f}",
            ]
            for r in rows
        ],
    )
    by_family = markdown_table(
        ["train pairs", "epochs", "learning rate", *shown],
        [
            [r.train_pairs, r.epochs, f"{r.learning_rate:g}"]
            + [r.family_expected_accuracy[f] for f in shown]
            for r in rows
        ]
        + [["right-or-wrong judge", "", "", *(family_right_or_wrong[f] for f in shown)]]
        + [["ceiling", "", "", *(family_ceilings[f] for f in shown)]],
    )
    report = write_report(
        out,
        f"Helpfulness reward model against its training pairs (round {round_index})",
        [
            f"{len(test)} helpfulness test pairs of round {round_index}; the round's own "
            f"train pairs plus fresh ones from {', '.join(name for name, _ in models)}; "
            f"batch "
            f"{config.reward_model.batch_size}. A judge that knows every right answer but not "
            f"how near a wrong one is ranks these pairs at {right_or_wrong:.3f} (expected), "
            f"against the Bayes ceiling of {ceiling:.3f}.\n\n" + overall,
            "## Expected accuracy per task family\n\n" + by_family,
        ],
        {"scaling": scaling_figure(rows, ceiling, right_or_wrong)},
    )
    summary = {
        "round": round_index,
        "ceiling": round(ceiling, 4),
        "family_ceilings": {f: round(family_ceilings[f], 4) for f in shown},
        "right_or_wrong_accuracy": round(right_or_wrong, 4),
        "family_right_or_wrong_accuracy": {f: round(family_right_or_wrong[f], 4) for f in shown},
        "rows": [
            {
                "train_pairs": r.train_pairs,
                "epochs": r.epochs,
                "learning_rate": r.learning_rate,
                "probe_head": r.probe_head,
                "answer_shown": r.answer_shown,
                "accuracy": round(r.accuracy, 4),
                "expected_accuracy": round(r.expected_accuracy, 4),
                "family_expected_accuracy": {
                    f: round(v, 4) for f, v in r.family_expected_accuracy.items()
                },
            }
            for r in rows
        ],
        "report": str(report),
    }
    print(f"report: {report}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
