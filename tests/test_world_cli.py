"""The textrl CLI for the world: files written, speed-relevant batching, resumable annotation."""

from __future__ import annotations

import json

import pytest

from textrl.cli import main
from textrl.jsonl import read_jsonl
from textrl.models import load_causal_lm, tiny_llama
from textrl.tokenization import build_char_tokenizer
from textrl.world import pair_sampling, red_team
from textrl.world.annotator import SimulatedAnnotator
from textrl.world.human_annotation import LABEL_FIELDS, annotate
from textrl.world.pair_sampling import Variant, sample_pairs
from textrl.world.preferences import annotate_sampled, read_preferences
from textrl.world.splits import split_tasks
from textrl.world.tasks import REFUSAL


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama over the full character tokenizer, saved like any HF checkpoint."""
    directory = tmp_path_factory.mktemp("tiny-checkpoint")
    tokenizer = build_char_tokenizer()
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_pairs_of_identical_responses_are_not_sent_to_annotators(checkpoint):
    model, tokenizer = load_causal_lm(checkpoint)
    tasks = split_tasks("rlhf")
    greedy = [Variant(name, model, tokenizer, 0.0) for name in ("a", "b")]
    assert sample_pairs(greedy, tasks, 20, seed=0, max_new_tokens=6).tasks == []
    sampled = [Variant(name, model, tokenizer, 1.0) for name in ("a", "b")]
    pairs = sample_pairs(sampled, tasks, 20, seed=0, max_new_tokens=6)
    assert 0 < len(pairs.tasks) == len(pairs.first) == len(pairs.second_variant) <= 20
    assert all(a.strip() != b.strip() for a, b in zip(pairs.first, pairs.second, strict=True))


def test_red_teamers_retry_until_the_model_complies_and_annotators_rank_it_last(
    checkpoint, monkeypatch
):
    """A model that answers a lure only at its third try, and refuses harmful prompts: the
    elicited side is that third answer, on the harmful prompt, and loses every comparison.
    A model that never stops refusing leaves two identical refusals: no pair."""
    attempts = 4

    def third_try_answers(model, tokenizer, prompts, *args, **kwargs):
        lure_index = iter(range(len(prompts)))
        return [
            REFUSAL
            if prompt in harmful_prompts or next(lure_index) % attempts != 2
            else f"Use it, {prompt}"
            for prompt in prompts
        ]

    tasks = split_tasks("rlhf")
    harmful = [t for t in tasks if t.family == "unsafe"]
    lures = [t for t in tasks if t.family == "borderline"]
    harmful_prompts = {t.prompt for t in harmful}
    model, tokenizer = load_causal_lm(checkpoint)
    variants = [Variant(name, model, tokenizer, 1.0) for name in ("a", "b")]
    monkeypatch.setattr(pair_sampling, "generate_responses", third_try_answers)
    pairs = red_team.red_team_pairs(variants, harmful, lures, 30, seed=0, attempts=attempts)
    assert len(pairs.tasks) == 30 and {t.family for t in pairs.tasks} == {"unsafe"}
    assert pairs.first == [REFUSAL] * 30
    lure_prompts = {t.prompt for t in lures}
    assert all(text.removeprefix("Use it, ") in lure_prompts for text in pairs.second)
    assert all(name in ("red-team:a", "red-team:b") for name in pairs.second_variant)
    labelled = annotate_sampled(pairs, SimulatedAnnotator(noise=0.0))
    assert all(p.chosen == REFUSAL and p.category == "safety" for p in labelled)

    monkeypatch.setattr(
        pair_sampling, "generate_responses", lambda m, t, prompts, *a, **k: [REFUSAL] * len(prompts)
    )
    assert red_team.red_team_pairs(variants, harmful, lures, 30, seed=0).tasks == []


def test_world_writes_prompts_and_demonstrations(tmp_path, capsys):
    assert main(["world", "--out", str(tmp_path)]) == 0
    demonstrations = read_jsonl(
        tmp_path / "train.demonstrations.jsonl", {"prompt": str, "answer": str}
    )
    prompts = read_jsonl(tmp_path / "test.prompts.jsonl", {"prompt": str, "is_safety": bool})
    assert len(demonstrations) > 200 and len(prompts) > 20
    assert any(record["is_safety"] for record in prompts)
    padded = sum("Hope this helps!" in record["answer"] for record in demonstrations)
    assert main(["world", "--out", str(tmp_path / "plain"), "--wordy-writers", "0"]) == 0
    plain = read_jsonl(
        tmp_path / "plain" / "train.demonstrations.jsonl", {"prompt": str, "answer": str}
    )
    assert padded > len(demonstrations) / 2
    assert len(plain) == len(demonstrations)
    assert not any("Hope this helps!" in record["answer"] for record in plain)


def test_collect_preferences_writes_labelled_pairs(checkpoint, tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    code = main(
        [
            "collect-preferences",
            "--model",
            str(checkpoint),
            "--pairs",
            "120",
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
            "--noise",
            "0.05",
        ]
    )
    assert code == 0
    pairs = read_preferences(out)
    assert len(pairs) == 120
    assert {p.category for p in pairs} <= {"helpfulness", "safety"}
    assert all(p.chosen_model != p.rejected_model for p in pairs)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pairs"] == 120


def test_evaluate_prints_a_table_and_json(checkpoint, capsys):
    code = main(
        [
            "evaluate",
            "--model",
            str(checkpoint),
            "--against",
            str(checkpoint),
            "--split",
            "validation",
            "--max-new-tokens",
            "8",
            "--json",
        ]
    )
    assert code == 0
    output = capsys.readouterr().out
    assert "| model | prompts | gold helpfulness" in output
    numbers = json.loads(output.strip().splitlines()[-1])
    assert numbers["win_rate"] == 0.5  # greedy decoding against itself: all ties


def test_missing_checkpoint_is_a_clear_error(tmp_path, capsys):
    code = main(["evaluate", "--model", str(tmp_path / "nope")])
    assert code == 2
    assert "not a Hugging Face model directory" in capsys.readouterr().err


def scripted(answers):
    remaining = list(answers)

    def read_line(prompt: str) -> str:
        if not remaining:
            raise EOFError
        return remaining.pop(0)

    return read_line


def test_annotation_resumes_where_it_stopped_and_never_loses_a_label(
    checkpoint, tmp_path, monkeypatch
):
    out = tmp_path / "labels.jsonl"
    monkeypatch.setattr("builtins.input", scripted([]))
    assert (
        main(
            [
                "annotate",
                "--model",
                str(checkpoint),
                "--pairs",
                "4",
                "--max-new-tokens",
                "6",
                "--out",
                str(out),
            ]
        )
        == 0
    )  # no terminal input: stops at once, pairs are fixed
    pairs_path = tmp_path / "labels.jsonl.pairs.jsonl"
    pairs_before = pairs_path.read_text()
    shown: list[str] = []
    given = annotate(pairs_path, out, scripted(["1", "2", "x", "2", "4", "q"]), shown.append)
    assert given == 2  # "x" is asked again, "q" stops
    assert any("Stopped; 2 new labels" in line for line in shown)
    with out.open("a") as handle:  # a crash in the middle of writing the next label
        handle.write('{"prompt": "half a lab')
    given = annotate(pairs_path, out, scripted(["s", "1", "3"]), shown.append)
    assert given == 1
    labels = read_jsonl(out, LABEL_FIELDS)
    assert sorted(label["pair_id"] for label in labels) == [0, 1, 3]
    assert [label["rating"] for label in labels] == [
        "better",
        "negligibly better/unsure",
        "slightly better",
    ]
    assert pairs_path.read_text() == pairs_before
