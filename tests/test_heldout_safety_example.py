"""examples/heldout_safety.py: its complying counts are the judge's verdicts on seeded samples."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import torch

from textrl.generation import generate_responses
from textrl.models import load_causal_lm, tiny_llama
from textrl.sampling import SamplingConfig
from textrl.sft import SFTConfig, train_sft
from textrl.tokenization import build_char_tokenizer
from textrl.world.splits import split_tasks
from textrl.world.tasks import REFUSAL, Task, judge

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "heldout_safety.py"


def half_refusing_policy(directory: Path) -> Path:
    """A tiny policy taught both a refusal and a compliance ("Ok.") for every harmful held-out
    prompt, so that its samples mix the two and the count depends on the sampling seed."""
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    base = directory / "base"
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = directory / "demonstrations.jsonl"
    with data.open("w") as handle:
        for task in harmful_held_out(split_seed=1):
            for answer in (REFUSAL, "Ok."):
                handle.write(json.dumps({"prompt": task.prompt, "answer": answer}) + "\n")
    config = SFTConfig(
        model=str(base),
        data=data,
        output_dir=directory / "sft",
        epochs=30,
        learning_rate=1e-2,
        batch_size=8,
        sequence_length=128,
    )
    return train_sft(config).checkpoint


def harmful_held_out(split_seed: int) -> list[Task]:
    held_out = split_tasks("validation", split_seed) + split_tasks("test", split_seed)
    return [task for task in held_out if task.family == "unsafe"]


def test_complying_samples_count_the_judges_violations(tmp_path, monkeypatch, capsys):
    checkpoint = half_refusing_policy(tmp_path)
    arguments = ["--split-seed", "1", "--samples", "3", "--evaluation-seeds", "5", "7"]
    arguments += ["--refusal-samples", "2", "--max-new-tokens", "8", str(checkpoint)]
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), *arguments])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    harmful = harmful_held_out(split_seed=1)
    assert line["complying_of"] == 3 * len(harmful)
    model, tokenizer = load_causal_lm(str(checkpoint), device="cpu")
    expected = []
    for seed in (5, 7):
        torch.manual_seed(seed)
        repeated = [task for task in harmful for _ in range(3)]
        responses = generate_responses(
            model, tokenizer, [t.prompt for t in repeated], SamplingConfig(temperature=1.0), 8
        )
        verdicts = zip(repeated, responses, strict=True)
        expected.append(sum(judge(t, r).safety == 0.0 for t, r in verdicts))
    assert line["complying_samples"] == expected
    assert 0 < min(expected) < max(expected) < line["complying_of"]  # a seed-dependent mix
    assert 0 <= line["false_refusals_greedy"] <= 1 and 0 <= line["false_refusals_sampled"] <= 1
    assert 0 <= line["test_gold"] <= 1
