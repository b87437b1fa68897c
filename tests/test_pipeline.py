"""The Llama 2 pipeline end to end at toy sizes: artefacts, report, config errors, resume."""

from __future__ import annotations

import json
import os
import re
import runpy
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from textrl.jsonl import DataFormatError
from textrl.models import tiny_llama
from textrl.pipeline import load_pipeline_config, run_pipeline, stages
from textrl.pipeline.runner import LEDGER_FILE
from textrl.sft import SFTResult
from textrl.tokenization import build_char_tokenizer
from textrl.world.preferences import read_preferences
from textrl.world.splits import split_tasks

SCALING_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reward_model_scaling.py"
TOY_CONFIG = """
output_dir = "{out}"
rounds = 2
device = "{device}"

[model]
hidden_size = 32
num_layers = 1
num_heads = 2

[pretraining]
epochs = 1
words = 20

[sft]
epochs = 1
batch_size = 16

[preferences]
pairs_per_round = 48
safety_pairs_per_round = 24
red_team_pairs_per_round = 12
evaluation_pairs = 24

[rejection_sampling]
samples_per_prompt = 2
prompts_per_round = 16
epochs = [2, 1]

[ppo]
iterations = 2
batch_size = 8

[safety_dpo]
every_round = true
samples_per_prompt = 4
pairs_per_prompt = 2
borderline_pairs_per_prompt = 1
epochs = 1

[evaluation]
max_new_tokens = 6
samples_for_figures = 4
figure_prompts = 6
kl_prompts = 2
kl_samples_per_prompt = 16
violation_samples = 8
"""


def toy_config_file(tmp_path: Path, device: str = "cpu") -> Path:
    path = tmp_path / "toy.toml"
    path.write_text(TOY_CONFIG.format(out=tmp_path / "run", device=device))
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
def test_the_pipeline_runs_every_stage_and_writes_its_report(tmp_path, device):
    config = load_pipeline_config(toy_config_file(tmp_path, device))
    summary = run_pipeline(config)
    assert [v["name"] for v in summary["versions"]] == ["SFT", "RLHF-V1", "RLHF-V2"]
    for version in summary["versions"]:
        assert 0 <= version["gold_helpfulness"] <= 1 and 0 <= version["gold_safety"] <= 1
        assert 0 <= version["sampled_gold_helpfulness"] <= 1
        assert 0 <= version["sampled_gold_safety"] <= 1
        assert 0 <= version["violation_rate"] <= 1
        assert 0 <= version["sampled_violation_rate"] <= 1
        assert version["sampled_violation_rate_se"] >= 0
    out = config.output_dir
    for artefact in [
        "pretraining/corpus.jsonl",
        "sft",
        "round1/preferences/train.jsonl",
        "round1/reward_models/helpfulness",
        "round1/reward_models/safety",
        "round1/rejection_sampling/kept.jsonl",
        "round2/rejection_sampling/kept.jsonl",
        "round2/ppo/tensorboard",
        "round1/safety_dpo/pairs.jsonl",
        "round2/safety_dpo/pairs.jsonl",
        "round2/safety_dpo/tensorboard",
        "report/report.md",
        "report/reward_vs_n.png",
        "report/reward_vs_temperature.png",
        "report/reward_distribution.png",
        "report/safety_trade_off.png",
        "report/ppo_reward_vs_kl.png",
    ]:
        assert (out / artefact).exists(), artefact
    # round 2 trains on round 1's preferences plus its own, and keeps round 1's best samples
    round1 = (out / "round1/preferences/train.jsonl").read_text().splitlines()
    round2 = (out / "round2/preferences/train.jsonl").read_text().splitlines()
    assert round2[: len(round1)] == round1 and len(round2) > len(round1)
    elicited = [json.loads(line) for line in round1 if '"red-team:' in line]
    assert elicited and all(pair["category"] == "safety" for pair in elicited)
    kept_rounds = {
        json.loads(line)["round"] for line in open(out / "round2/rejection_sampling/kept.jsonl")
    }
    assert kept_rounds == {0, 1}  # pipeline rounds 1 and 2, counted from 0
    # safety DPO trains on the policy's samples for red-team prompts and, at most
    # borderline_pairs_per_prompt each, the borderline ones; V2 is its result
    red_team_prompts = {json.loads(line)["prompt"] for line in round2 if '"red-team:' in line}
    borderline = {t.prompt for t in split_tasks("rlhf", config.seed) if t.family == "borderline"}
    dpo_pairs = [json.loads(line) for line in open(out / "round2/safety_dpo/pairs.jsonl")]
    on_borderline = Counter(p["prompt"] for p in dpo_pairs if p["prompt"] in borderline)
    assert {p["prompt"] for p in dpo_pairs} - set(on_borderline) <= red_team_prompts
    assert on_borderline and max(on_borderline.values()) <= 1
    assert all(pair["chosen"] != pair["rejected"] for pair in dpo_pairs)
    ledger = json.loads((out / LEDGER_FILE).read_text())
    # SFT starts from the model pretrained on the world's corpus, which starts from the base
    pretraining = ledger["pretraining"]["result"]
    assert pretraining["initialised_from"] == ledger["base"]["result"]["checkpoint"]
    assert ledger["sft"]["result"]["initialised_from"] == pretraining["checkpoint"]
    safety_dpo = ledger["RLHF-V2 safety DPO"]["result"]
    assert safety_dpo["borderline_pairs"] == sum(on_borderline.values())
    assert ledger["evaluate RLHF-V2"]["result"]["checkpoint"] == safety_dpo["checkpoint"]
    # the epoch schedule [2, 1]: two passes over the kept set in round 1, one in round 2
    rs_epochs = [ledger[f"RLHF-V{i} rejection sampling"]["result"]["epochs"] for i in (1, 2)]
    assert rs_epochs == [2, 1]
    # with every_round, round 1's version is its safety DPO checkpoint, after its RS
    round1_dpo = ledger["RLHF-V1 safety DPO"]["result"]["checkpoint"]
    assert ledger["evaluate RLHF-V1"]["result"]["checkpoint"] == round1_dpo
    report = (out / "report/report.md").read_text()
    assert "Table 8" in report and "log N - (N-1)/N" in report and "Safety DPO" in report
    if device == "cpu":  # on the finished run: examples/reward_model_scaling.py
        scaling = runpy.run_path(str(SCALING_EXAMPLE), run_name="reward_model_scaling")
        arguments = ["--config", str(tmp_path / "toy.toml"), "--extra-pairs", "0", "40"]
        summary = scaling["main"]([*arguments, "--epochs", "1"])
        own, more = summary["rows"]
        assert more["train_pairs"] > own["train_pairs"]
        # no extra pairs at the pipeline's settings is the round's own reward model again
        pipeline_rm = ledger["RLHF-V2 reward models"]["result"]["helpfulness"]
        assert own["accuracy"] == pytest.approx(pipeline_rm["test_accuracy"]["overall"], abs=1e-4)
        assert Path(summary["report"]).exists()
        assert (Path(summary["report"]).parent / "scaling.png").exists()
        # no judge ranks better than the Bayes ceiling, the right-or-wrong one included
        assert 0.5 <= summary["right_or_wrong_accuracy"] <= summary["ceiling"]
        # a learning-rate grid with a probed head, the answers shown: new models, each its own
        # directory, trained and tested on prompts that end with the gold answer
        rate = config.reward_model.learning_rate
        grid = ["--extra-pairs", "0", "--learning-rates", str(rate), str(2 * rate), "--probe-head"]
        rows = scaling["main"]([*arguments[:2], *grid, "--epochs", "1", "--show-answer"])["rows"]
        assert [(r["learning_rate"], r["probe_head"], r["answer_shown"]) for r in rows] == [
            (rate, True, True),
            (2 * rate, True, True),
        ]
        directories = sorted(p.name for p in Path(summary["report"]).parent.glob("extra0_*"))
        assert directories == [
            f"extra0_epochs1_lr{r:g}{s}"
            for r, s in [(rate, ""), (rate, "_probe_answer"), (2 * rate, "_probe_answer")]
        ]
        shown = read_preferences(Path(summary["report"]).parent / "train_0_answer.jsonl")
        helpful = [p for p in shown if p.category == "helpfulness"]
        assert helpful and all(re.search(r" Answer: .+$", p.prompt) for p in helpful)


def test_preference_pairs_do_not_depend_on_what_ran_before(tmp_path):
    """A run resumed after SFT must collect the pairs that an uninterrupted run, whose SFT
    consumed the random stream, collects."""
    policy = tmp_path / "policy"
    tokenizer = build_char_tokenizer()
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    config = load_pipeline_config(toy_config_file(tmp_path))
    written = []
    for earlier_draws in (0, 1000):
        torch.rand(earlier_draws)
        directory = tmp_path / f"after-{earlier_draws}-draws"
        stages.preferences_stage(config, 1, [("SFT", str(policy))], None, directory)
        written.append((directory / "train.jsonl").read_text())
    assert written[0] == written[1] and '"red-team:' in written[0]


@pytest.mark.slow
def test_oracle_rejection_sampling_example_reports_every_round(tmp_path):
    policy = tmp_path / "policy"
    tokenizer = build_char_tokenizer()
    tiny_llama(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    example = Path(__file__).parent.parent / "examples" / "oracle_rejection_sampling.py"
    command = [sys.executable, str(example), "--policy", str(policy), "--out", str(tmp_path)]
    command += ["--config", str(toy_config_file(tmp_path)), "--rounds", "2", "--epochs", "2"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert lines[0]["win_rate_vs_start"] == 0.5  # the start against itself: all ties
    for line in lines[1:]:
        assert Path(line["checkpoint"]).is_dir()
        assert 0 <= line["gold_helpfulness"] <= 1 and 0 <= line["correct_rate"] <= 1
    assert (tmp_path / "round2/kept.jsonl").exists()
    assert (tmp_path / "round2/tensorboard").is_dir()


def test_config_errors_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('rounds = 2\n\n[sft]\nepochs = "many"\n')
    with pytest.raises(
        DataFormatError, match=r"bad.toml:4: field 'sft.epochs' must be an integer, got 'many'"
    ):
        load_pipeline_config(path)
    path.write_text("[ppo]\niterations = 3\nclip = 0.1\n")
    with pytest.raises(DataFormatError, match=r"bad.toml:3: unknown field 'ppo.clip'"):
        load_pipeline_config(path)
    path.write_text("[rejection_sampling]\nepochs = []\n")
    expected = "an integer or a non-empty list, each an integer, got \\[\\]"
    with pytest.raises(
        DataFormatError, match=rf"bad.toml:2: field 'rejection_sampling.epochs' must be {expected}"
    ):
        load_pipeline_config(path)
    path.write_text("rounds = \n")
    with pytest.raises(DataFormatError, match="not valid TOML"):
        load_pipeline_config(path)


@pytest.mark.slow
def test_a_killed_pipeline_resumes_after_its_last_finished_stage(tmp_path):
    config_file = toy_config_file(tmp_path)
    ledger = tmp_path / "run" / LEDGER_FILE
    process = subprocess.Popen(
        [sys.executable, "-m", "textrl.cli", "pipeline", "--config", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if ledger.exists() and "RLHF-V1 preferences" in json.loads(ledger.read_text()):
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = json.loads(ledger.read_text())
    assert "RLHF-V1 preferences" in finished_before and "report" not in finished_before

    summary = run_pipeline(load_pipeline_config(config_file))
    finished_after = json.loads(ledger.read_text())
    for name, entry in finished_before.items():  # not run again
        assert finished_after[name] == entry
    assert "report" in finished_after and Path(summary["report"]).exists()


def test_rejection_sampling_epochs_are_one_number_or_one_per_round(tmp_path):
    path = tmp_path / "epochs.toml"
    path.write_text("[rejection_sampling]\nepochs = 3\n")
    settings = load_pipeline_config(path).rejection_sampling
    assert [settings.epochs_in_round(i) for i in (1, 2, 3)] == [3, 3, 3]
    path.write_text("[rejection_sampling]\nepochs = [4, 2]\n")
    settings = load_pipeline_config(path).rejection_sampling
    assert [settings.epochs_in_round(i) for i in (1, 2, 3, 4)] == [4, 2, 2, 2]  # the last repeats


def test_bf16_and_gradient_checkpointing_reach_the_training_stages(tmp_path, monkeypatch):
    path = tmp_path / "half.toml"
    path.write_text(
        "[sft]\nbf16 = true\ngradient_checkpointing = true\n[reward_model]\nbf16 = true\n"
    )
    trained = []
    monkeypatch.setattr(stages, "train_sft", lambda c: trained.append(c) or SFTResult(tmp_path, 0))
    stages.sft_stage(load_pipeline_config(path), "base", tmp_path / "demos.jsonl", tmp_path)
    assert trained[0].bf16 and trained[0].gradient_checkpointing
    for config, half in [(load_pipeline_config(path), True), (load_pipeline_config(None), False)]:
        assert stages.reward_model_config(config, "safety", "sft", path, tmp_path).bf16 == half


def test_the_shipped_configs_load():
    configs = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))
    assert configs, "configs/ holds the shipped pipeline configs"
    for path in configs:
        config = load_pipeline_config(path)
        assert config.rounds >= 1, path
