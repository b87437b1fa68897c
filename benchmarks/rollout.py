"""Rollout throughput: the text env + LM policy + collector against raw ``model.generate``.

Both paths sample the same number of new tokens from the same model, for the same
left-padded prompt tokens, from the full temperature-1 distribution (HF's default
``top_k=50`` switched off) with EOS banned until the last token, so every row
generates exactly ``--new-tokens`` tokens. The env path is what PPO collects with:
``TextCollector`` driving ``TextGenerationVectorEnv`` with ``LMActorCriticPolicy``
(KV-cached acting, value head), once without and once with the env's frozen
reference model (a second copy of the same model) scoring every token. The ratio
env/generate is the price of the RL plumbing; the issue's targets for SmolLM2 are
printed next to the table, not asserted.

Protocol: for every (model, batch) a short warm-up run of each path, then
``--repeats`` rounds of generate, env, env with reference, every other round in
reverse order so that drift in machine load hits all three alike; the median
tokens/s of each path is reported. Peak memory is the rise of the process's
resident-set high-water mark during a run (Linux ``VmHWM``, reset before each run
through ``/proc/self/clear_refs``); where that cannot be reset it is the process's
peak so far, and the report says which.

Usage: ``python benchmarks/rollout.py [--models tiny,smollm2] [--batches 1,8,32]
[--new-tokens 64] [--repeats 3] [--threads N] [--json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from arguments import comma_separated_choices
from tianshou.algorithm.algorithm_base import policy_within_training_step
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from agents.lm_policy import LMActorCriticPolicy
from agents.text_collector import TextCollector
from envs.text_generation import TextGenerationVectorEnv
from textrl.chat import format_prompt
from textrl.models import load_causal_lm, tiny_llama
from textrl.prompts import PromptSource
from textrl.sampling import SamplingConfig
from textrl.tokenization import build_char_tokenizer

MODELS = ("tiny", "smollm2")
PROMPTS = (
    "Write a haiku about the sea.",
    "Explain why the sky is blue.",
    "Name three uses for a paperclip.",
    "Describe a sunrise in one sentence.",
    "What makes a good cup of tea?",
    "Give me a tip for learning to cook.",
)
"""A batch of B prompts cycles through these, in order."""
WARMUP_NEW_TOKENS = 2
"""Length of the untimed warm-up run of each path, enough to hit prefill and one cached step."""
TARGET_MODEL = "smollm2"
TARGET_BATCHES = (8, 32)
TARGET_RATIOS = {False: 0.8, True: 0.45}
"""The issue's minimum env/generate ratio for SmolLM2 at batches 8 and 32, by with_reference."""
PATHS = ("generate", "env", "env_with_reference")
CLEAR_REFS = Path("/proc/self/clear_refs")
PROCESS_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class Workload:
    """What both paths generate from: one model and batch, the same prompt tokens, one length."""

    model: PreTrainedModel
    reference_model: PreTrainedModel
    """A separate copy of ``model``, so the reference forward costs a second model's forward."""
    tokenizer: PreTrainedTokenizerBase
    prompts: list[str]
    prompt_ids: torch.Tensor
    """``(B, P)``, left-padded to the longest prompt, exactly as the env lays prompts out."""
    prompt_mask: torch.Tensor
    """``(B, P)``, 1 on real tokens."""
    new_tokens: int


@dataclass(frozen=True)
class Measurement:
    """One timed run of one path."""

    tokens_per_s: float
    peak_rss_mb: float
    """Rise of the RSS high-water mark during the run, or the process's peak RSS so far."""


@dataclass(frozen=True)
class Row:
    """One (model, batch, with_reference) result: medians over the repeats."""

    model: str
    batch: int
    with_reference: bool
    new_tokens: int
    threads: int
    env_tokens_per_s: float
    generate_tokens_per_s: float
    ratio: float
    """``env_tokens_per_s / generate_tokens_per_s``."""
    peak_rss_mb: float
    """The env path's largest peak-RSS figure over the repeats."""
    generate_peak_rss_mb: float
    """The same for ``model.generate``, to compare the env's memory with."""


def load_model(name: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A fresh copy of model ``name`` and its tokenizer; tiny copies are equal (seeded)."""
    if name == "smollm2":
        return load_causal_lm("smollm2")
    tokenizer = build_char_tokenizer()
    return tiny_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=4), tokenizer


def build_workload(
    model: PreTrainedModel,
    reference_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    batch: int,
    new_tokens: int,
) -> Workload:
    """``batch`` prompts cycled from ``PROMPTS``, formatted and tokenized as the env does."""
    prompts = [PROMPTS[row % len(PROMPTS)] for row in range(batch)]
    texts = [format_prompt(tokenizer, prompt, use_chat_template=True) for prompt in prompts]
    encoded = tokenizer(
        texts, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt"
    )
    return Workload(
        model=model,
        reference_model=reference_model,
        tokenizer=tokenizer,
        prompts=prompts,
        prompt_ids=encoded["input_ids"],
        prompt_mask=encoded["attention_mask"],
        new_tokens=new_tokens,
    )


def generate_tokens(workload: Workload) -> int:
    """Sample ``new_tokens`` per row with ``model.generate``; returns how many were generated."""
    with torch.no_grad():
        output = workload.model.generate(
            input_ids=workload.prompt_ids,
            attention_mask=workload.prompt_mask,
            do_sample=True,
            temperature=1.0,
            top_k=0,  # 0 disables top-k; left unset, HF's global default of 50 applies
            top_p=1.0,
            min_new_tokens=workload.new_tokens,
            max_new_tokens=workload.new_tokens,
            pad_token_id=workload.tokenizer.pad_token_id,
        )  # (B, P + new_tokens)
    generated = output.shape[1] - workload.prompt_ids.shape[1]
    if generated != workload.new_tokens:
        raise RuntimeError(
            f"model.generate returned {generated} new tokens per row, expected "
            f"{workload.new_tokens}; check that min_new_tokens still bans EOS"
        )
    return output.shape[0] * generated


class EnvRollout:
    """The env path over a workload: env, LM policy and collector, built once, collected often."""

    def __init__(self, workload: Workload, with_reference: bool) -> None:
        batch = len(workload.prompts)
        # each reset draws `batch` prompts from the cycle: exactly the workload's, in order
        cycle = itertools.cycle(workload.prompts)
        env = TextGenerationVectorEnv(
            num_envs=batch,
            tokenizer=workload.tokenizer,
            prompts=PromptSource.from_function(lambda rng: next(cycle)),
            reward_fn=lambda prompts, responses: [0.0] * len(prompts),
            max_new_tokens=workload.new_tokens,
            max_prompt_tokens=workload.prompt_ids.shape[1],
            reference_model=workload.reference_model if with_reference else None,
            use_chat_template=True,
        )
        self.policy = LMActorCriticPolicy(
            model=workload.model,
            observation_space=env.single_observation_space,
            action_space=env.single_action_space,
            max_prompt_tokens=workload.prompt_ids.shape[1],
            sampling=SamplingConfig(temperature=1.0, min_new_tokens=workload.new_tokens),
            eos_token_id=workload.tokenizer.eos_token_id,
        )
        self.collector = TextCollector(self.policy, env, seed=0)
        self.batch = batch
        self.expected_tokens = batch * workload.new_tokens

    def run(self) -> int:
        """Collect one lockstep batch of episodes; returns the tokens generated."""
        self.collector.reset_buffer()  # O(1); the buffer would fill up over the repeats
        with policy_within_training_step(self.policy):
            stats = self.collector.collect(n_episode=self.batch)
        if stats.n_collected_steps != self.expected_tokens:
            raise RuntimeError(
                f"the collector generated {stats.n_collected_steps} tokens, expected "
                f"{self.expected_tokens}; an episode ended early, so EOS was not banned"
            )
        return stats.n_collected_steps


def path_runners(workload: Workload) -> dict[str, Callable[[], int]]:
    """Each path of ``PATHS`` as a callable that generates and returns its token count."""
    return {
        "generate": partial(generate_tokens, workload),
        "env": EnvRollout(workload, with_reference=False).run,
        "env_with_reference": EnvRollout(workload, with_reference=True).run,
    }


def peak_rss_resettable() -> bool:
    """Whether this process can reset its RSS high-water mark (Linux ``clear_refs`` mode 5)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def process_status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status``, such as ``VmRSS`` or ``VmHWM``."""
    for line in PROCESS_STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(f"{PROCESS_STATUS} has no {field} field")


def process_peak_rss_mb() -> float:
    """The process's peak RSS so far; ``ru_maxrss`` is in KiB on Linux and bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def measure(run: Callable[[], int], rss_resettable: bool) -> Measurement:
    """Time ``run`` and take its peak memory (see ``Measurement.peak_rss_mb``)."""
    if rss_resettable:
        CLEAR_REFS.write_text("5")
        rss_before_kib = process_status_kib("VmRSS")
    start = time.perf_counter()
    tokens = run()
    seconds = time.perf_counter() - start
    peak_rss_mb = (
        (process_status_kib("VmHWM") - rss_before_kib) / 2**10
        if rss_resettable
        else process_peak_rss_mb()
    )
    return Measurement(tokens_per_s=tokens / seconds, peak_rss_mb=peak_rss_mb)


def measure_workload(
    model_name: str,
    workload: Workload,
    repeats: int,
    threads: int,
    rss_resettable: bool,
    progress: tqdm,
) -> list[Row]:
    """Warm up every path, run them interleaved ``repeats`` times, and report both env rows."""
    warm_up_workload = dataclasses.replace(workload, new_tokens=WARMUP_NEW_TOKENS)
    for warm_up in path_runners(warm_up_workload).values():
        warm_up()
    runners = path_runners(workload)
    measurements: dict[str, list[Measurement]] = {path: [] for path in PATHS}
    for repeat in range(repeats):
        for path in PATHS if repeat % 2 == 0 else reversed(PATHS):
            measurements[path].append(measure(runners[path], rss_resettable))
        progress.update()
    generate_tokens_per_s = statistics.median(m.tokens_per_s for m in measurements["generate"])
    generate_peak_rss_mb = max(m.peak_rss_mb for m in measurements["generate"])
    rows = []
    for with_reference, path in ((False, "env"), (True, "env_with_reference")):
        env_tokens_per_s = statistics.median(m.tokens_per_s for m in measurements[path])
        rows.append(
            Row(
                model=model_name,
                batch=len(workload.prompts),
                with_reference=with_reference,
                new_tokens=workload.new_tokens,
                threads=threads,
                env_tokens_per_s=env_tokens_per_s,
                generate_tokens_per_s=generate_tokens_per_s,
                ratio=env_tokens_per_s / generate_tokens_per_s,
                peak_rss_mb=max(m.peak_rss_mb for m in measurements[path]),
                generate_peak_rss_mb=generate_peak_rss_mb,
            )
        )
    return rows


def target_ratio(row: Row) -> float | None:
    """The issue's minimum ratio for this row, or None where the issue sets none."""
    if row.model == TARGET_MODEL and row.batch in TARGET_BATCHES:
        return TARGET_RATIOS[row.with_reference]
    return None


def target_cell(row: Row) -> str:
    """The row's target and whether this run met it, or empty."""
    target = target_ratio(row)
    if target is None:
        return ""
    return f">= {target:.2f} ({'met' if row.ratio >= target else 'missed'})"


def memory_note(rss_resettable: bool) -> str:
    """What the peak-RSS columns mean on this machine."""
    if rss_resettable:
        return (
            "Peak RSS MB: largest rise over the repeats of the process's resident-set "
            "high-water mark (VmHWM, reset before each run) during one run; memory the "
            "process already held from earlier runs and reuses does not count."
        )
    return (
        "Peak RSS MB: the process's peak resident set so far (ru_maxrss); this platform "
        "cannot reset the high-water mark, so it is not per run."
    )


def markdown_report(rows: list[Row], repeats: int, threads: int, rss_resettable: bool) -> str:
    """The results table, the targets, and what is timed."""
    lines = [
        "| model | batch | reference | env tok/s | generate tok/s | ratio | target "
        "| peak RSS MB | generate peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        cells = [
            row.model,
            str(row.batch),
            "yes" if row.with_reference else "no",
            f"{row.env_tokens_per_s:,.0f}",
            f"{row.generate_tokens_per_s:,.0f}",
            f"{row.ratio:.2f}",
            target_cell(row),
            f"{row.peak_rss_mb:,.1f}",
            f"{row.generate_peak_rss_mb:,.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    new_tokens = rows[0].new_tokens if rows else 0
    lines += [
        "",
        f"Tokens/s: generated tokens per second, median of {repeats} interleaved repeats after "
        f"a warm-up; {new_tokens} new tokens per row; torch threads: {threads}.",
        "env: TextCollector.collect over TextGenerationVectorEnv with LMActorCriticPolicy; "
        "reference yes: the env also scores every token with a second copy of the model.",
        "generate: model.generate on the same prompt tokens, sampling the full distribution at "
        "temperature 1, EOS banned until the last token. Ratio = env / generate.",
        f"Targets (the issue's, not asserted): {TARGET_MODEL} at batches "
        f"{', '.join(map(str, TARGET_BATCHES))}, ratio >= {TARGET_RATIOS[False]:.2f} without "
        f"reference, >= {TARGET_RATIOS[True]:.2f} with.",
        memory_note(rss_resettable),
    ]
    return "\n".join(lines)


def parse_batches(value: str) -> list[int]:
    """The comma-separated batch sizes, each a positive integer."""
    try:
        batches = [int(size) for size in value.split(",") if size.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        raise argparse.ArgumentTypeError(
            f"batch sizes must be positive integers separated by commas, got {value!r}"
        )
    return batches


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        type=comma_separated_choices(MODELS),
        default=list(MODELS),
        help="comma-separated subset",
    )
    parser.add_argument(
        "--batches", type=parse_batches, default=[1, 8, 32], help="comma-separated batch sizes"
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path (median)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, all cores)")
    parser.add_argument("--json", action="store_true", help="one JSON object per row")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    """Measure every (model, batch) in turn and report one row per reference setting."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    rss_resettable = peak_rss_resettable()
    rows: list[Row] = []
    progress = tqdm(
        total=len(args.models) * len(args.batches) * args.repeats, desc="repeats", file=sys.stderr
    )
    for model_name in args.models:
        model, tokenizer = load_model(model_name)
        reference_model, _ = load_model(model_name)
        for batch in args.batches:
            progress.set_postfix_str(f"{model_name} batch {batch}")
            workload = build_workload(model, reference_model, tokenizer, batch, args.new_tokens)
            rows += measure_workload(
                model_name, workload, args.repeats, threads, rss_resettable, progress
            )
    progress.close()
    if args.json:
        for row in rows:
            print(json.dumps(dataclasses.asdict(row)))
        print(memory_note(rss_resettable), file=sys.stderr)
    else:
        print(markdown_report(rows, args.repeats, threads, rss_resettable))


if __name__ == "__main__":
    main(parse_args())
