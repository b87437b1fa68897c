"""SFT: prompt-masked loss, packing isolation, resume equivalence, clear errors."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from envs.text_generation import TextGenerationEnv
from tests.text_fixtures import TOKENIZER, assert_identical_weights, tiny_model
from textrl.combined_reward import CombinedReward, Whitening, gated_score
from textrl.jsonl import DataFormatError
from textrl.lm_losses import (
    IGNORE_INDEX,
    margin_ranking_loss,
    margins_for,
    prompt_masked_lm_loss,
    reward_centering_penalty,
)
from textrl.reward_model import (
    RewardModelConfig,
    accuracy_by_rating,
    fit_linear_head,
    last_token_features,
    likelihood_accuracy_by_rating,
    load_reward_model,
    pad_right,
    probe_head,
    ranking_accuracy_by_rating,
    response_log_likelihoods,
    score,
    score_encoded,
    tokenize_pairs,
    train_reward_model,
    training_pairs,
)
from textrl.sft import SFTConfig, checkpoints, save_checkpoint, train_sft
from textrl.sft_data import (
    pack,
    packed_attention_mask,
    read_examples,
    tokenize_conversation,
    tokenize_text,
)
from textrl.world.preferences import PreferencePair, write_preferences


def conversation(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_only_answer_tokens_are_back_propagated():
    torch.manual_seed(0)
    example = tokenize_conversation(TOKENIZER, conversation("abc", "de"), "x:1")
    labels = torch.tensor([example.labels])
    answer_positions = [i for i, label in enumerate(example.labels) if label != IGNORE_INDEX]
    assert len(answer_positions) == 3  # "d", "e", EOS; the prompt and separator are masked
    logits = torch.randn(1, len(example.labels), len(TOKENIZER), requires_grad=True)
    base = prompt_masked_lm_loss(logits, labels)
    base.backward()
    predicting_answer = {i - 1 for i in answer_positions}  # logits at i predict token i + 1
    for position in range(len(example.labels)):
        has_gradient = logits.grad[0, position].abs().sum().item() > 0
        assert has_gradient == (position in predicting_answer)
    changed = labels.clone()
    changed[0, answer_positions[0]] = (labels[0, answer_positions[0]] + 1) % len(TOKENIZER)
    assert prompt_masked_lm_loss(logits, changed).item() != base.item()


def test_a_text_record_trains_on_every_token_and_the_eos(tmp_path):
    data = tmp_path / "corpus.jsonl"
    data.write_text('{"text": "7+5=12"}\n{"prompt": "ab", "answer": "c"}\n')
    text, conversation_example = read_examples(data, TOKENIZER)
    expected = TOKENIZER("7+5=12", add_special_tokens=False)["input_ids"]
    assert text.input_ids == [*expected, TOKENIZER.eos_token_id]
    assert text.labels == text.input_ids
    assert text == tokenize_text(TOKENIZER, "7+5=12", f"{data}:1")
    assert conversation_example.labels[:3] == [IGNORE_INDEX] * 3  # "a", "b", separator


def test_packing_never_lets_one_example_attend_to_another():
    model = tiny_model()
    examples = [
        tokenize_conversation(TOKENIZER, conversation(p, a), f"x:{i}")
        for i, (p, a) in enumerate([("abc", "de"), ("h", "gggg"), ("ab ab", "c")])
    ]
    packed = pack(examples, 40, TOKENIZER.pad_token_id)
    assert packed.input_ids.shape[0] == 1  # all three share one sequence
    logits = model(
        input_ids=packed.input_ids,
        attention_mask=packed_attention_mask(packed.segment_ids),
        position_ids=packed.position_ids,
    ).logits[0]
    start = 0
    for example in examples:
        alone = model(torch.tensor([example.input_ids])).logits[0]
        torch.testing.assert_close(
            logits[start : start + len(example.input_ids)], alone, rtol=1e-4, atol=1e-5
        )
        start += len(example.input_ids)


def test_margin_loss_equals_a_hand_computation():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0])
    margins = margins_for(["significantly better", "negligibly better/unsure"], "large")
    expected = (
        -(
            torch.log(torch.sigmoid(torch.tensor(2.0 - 1.0 - 3.0)))
            + torch.log(torch.sigmoid(torch.tensor(0.5 - 1.0 - 0.0)))
        )
        / 2
    )
    torch.testing.assert_close(margin_ranking_loss(chosen, rejected, margins), expected)
    assert margins_for(["better", "slightly better"], "small").tolist() == pytest.approx(
        [2 / 3, 1 / 3]
    )


def test_reward_centering_penalty_is_the_mean_squared_pair_sum():
    chosen, rejected = torch.tensor([2.0, 0.5]), torch.tensor([1.0, -0.5])
    assert reward_centering_penalty(chosen, rejected).item() == pytest.approx((9.0 + 0.0) / 2)
    # an offset shared by both answers to a prompt leaves the ranking loss alone, not this
    margins = torch.zeros(2)
    torch.testing.assert_close(
        margin_ranking_loss(chosen + 5, rejected + 5, margins),
        margin_ranking_loss(chosen, rejected, margins),
    )
    assert reward_centering_penalty(chosen + 5, rejected + 5) > reward_centering_penalty(
        chosen, rejected
    )


@pytest.fixture
def sft_setup(tmp_path):
    model_dir = tmp_path / "base"
    tiny_model().save_pretrained(model_dir)
    TOKENIZER.save_pretrained(model_dir)
    data = tmp_path / "demos.jsonl"
    pairs = [("abc", "cba"), ("hh", "h"), ("de", "ed"), ("fgh", "hgf"), ("a", "a"), ("bb", "b")]
    data.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in pairs * 3))
    return model_dir, data


def sft_config(model_dir, data, output_dir) -> SFTConfig:
    return SFTConfig(
        model=str(model_dir),
        data=data,
        output_dir=output_dir,
        epochs=2,
        learning_rate=1e-2,
        batch_size=2,
        sequence_length=24,
        save_every_steps=2,
    )


def test_sft_learns_and_a_killed_run_resumes_to_the_same_weights(sft_setup, tmp_path):
    model_dir, data = sft_setup
    straight = train_sft(sft_config(model_dir, data, tmp_path / "straight"))
    assert straight.losses[-1] < straight.losses[0]
    interrupted_dir = tmp_path / "interrupted"
    train_sft(sft_config(model_dir, data, interrupted_dir), stop_after_steps=3)
    assert [p.name for p in checkpoints(interrupted_dir)][-1] == "checkpoint-000003"
    resumed = train_sft(sft_config(model_dir, data, interrupted_dir))
    assert resumed.steps == straight.steps
    assert resumed.losses == straight.losses[3:]  # it ran only the steps after the checkpoint
    assert_identical_weights(straight.checkpoint, resumed.checkpoint)


def test_bad_sft_input_names_file_line_and_field(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(DataFormatError, match='bad.jsonl:2: field "answer" is missing'):
        read_examples(data, TOKENIZER)
    data.write_text('{"text": "abc"}\n{"text": ""}\n')
    with pytest.raises(DataFormatError, match='bad.jsonl:2: field "text" should be a non-empty'):
        read_examples(data, TOKENIZER)
    long_example = tokenize_conversation(TOKENIZER, conversation("a" * 50, "b"), "demos.jsonl:7")
    with pytest.raises(ValueError, match="demos.jsonl:7: the example has 53 tokens"):
        pack([long_example], 32, TOKENIZER.pad_token_id)


def test_safety_gating_uses_the_safety_score_when_tagged_or_below_the_threshold():
    helpfulness = torch.tensor([0.9, 0.9, 0.9, 0.2])
    safety = torch.tensor([0.5, 0.10, 0.5, 0.8])
    tagged = torch.tensor([True, False, False, False])
    assert gated_score(helpfulness, safety, tagged).tolist() == pytest.approx([0.5, 0.10, 0.9, 0.2])
    assert gated_score(
        helpfulness, torch.tensor([0.15] * 4), torch.zeros(4, dtype=torch.bool)
    ).tolist() == pytest.approx([0.9, 0.9, 0.9, 0.2])  # 0.15 itself is not below the threshold


def test_logit_whitening_on_hand_cases():
    calibration = torch.logit(torch.tensor([0.5, 0.7310586]))  # logits 0 and 1
    whitening = Whitening.fit(calibration)
    assert (whitening.mean, whitening.std) == pytest.approx((0.5, 0.70710678))
    assert whitening(torch.tensor([0.5, 1.5])).tolist() == pytest.approx([0.0, 1.41421356])


def killed_mid_run(function: str, config: SFTConfig | RewardModelConfig) -> int:
    """Run ``textrl.<function>(config)`` in a child process, SIGKILL it as soon as it has
    written a checkpoint, check that every checkpoint it left is complete, and return the
    last one's step."""
    module, name = function.rsplit(".", 1)
    script = f"from pathlib import PosixPath; from textrl.{module} import *; {name}({config!r})"
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not checkpoints(config.output_dir) and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    survivors = checkpoints(config.output_dir)
    assert survivors, "the run made no checkpoint before it was killed"
    for checkpoint in survivors:  # every visible checkpoint is complete
        assert (checkpoint / "model.safetensors").is_file()
    return int(survivors[-1].name.split("-")[1])


def test_a_run_killed_with_sigkill_keeps_its_checkpoint_and_resumes_to_the_same_weights(
    sft_setup, tmp_path
):
    model_dir, data = sft_setup
    config = dataclasses.replace(sft_config(model_dir, data, tmp_path / "killed"), epochs=8)
    straight = train_sft(dataclasses.replace(config, output_dir=tmp_path / "straight"))
    killed_at = killed_mid_run("sft.train_sft", config)
    assert killed_at < straight.steps  # killed mid-way
    resumed = train_sft(config)
    assert resumed.steps == straight.steps
    assert resumed.losses == straight.losses[killed_at:]
    assert_identical_weights(straight.checkpoint, resumed.checkpoint)


def test_the_combined_reward_is_a_batched_reward_function_the_text_env_accepts(tmp_path):
    directories = []
    for seed in (1, 2):
        directory = tmp_path / f"rm{seed}"
        tiny_model(seed=seed).save_pretrained(directory)
        TOKENIZER.save_pretrained(directory)
        directories.append(directory)
    prompts, responses = ["abc", "hh", "de", "abc"], ["cba", "h", "", "c"]
    reward = CombinedReward(
        helpfulness=load_reward_model(directories[0]),
        safety=load_reward_model(directories[1]),
        is_safety=lambda prompt: prompt == "hh",
        calibration_prompts=prompts,
        calibration_responses=responses,
    )
    calibrated = torch.tensor(reward(prompts, responses))
    assert abs(calibrated.mean().item()) < 1e-5 and calibrated.std().item() == pytest.approx(1.0)
    env = TextGenerationEnv(
        tokenizer=TOKENIZER,
        prompts=["abc"],
        reward_fn=reward,
        max_new_tokens=3,
        max_prompt_tokens=8,
    )
    env.reset(seed=0)
    a = TOKENIZER.convert_tokens_to_ids("a")
    results = [env.step(a) for _ in range(3)]
    assert results[-1][3] and results[-1][1] == pytest.approx(reward(["abc"], ["aaa"])[0])


def test_reward_model_accuracy_counts_identical_responses_as_a_coin_flip(tmp_path):
    directory = tmp_path / "rm"
    tiny_model(seed=3).save_pretrained(directory)
    TOKENIZER.save_pretrained(directory)
    model, tokenizer = load_reward_model(directory)
    same = PreferencePair(
        prompt="abc",
        chosen="cba",
        rejected="cba",
        rating="better",
        category="helpfulness",
        is_safety=False,
        chosen_model="a",
        rejected_model="b",
    )
    different = dataclasses.replace(same, rejected="hhhh", rating="significantly better")
    accuracy = accuracy_by_rating(model, tokenizer, [same, different])
    assert accuracy["better"] == 0.5
    assert accuracy["significantly better"] in (0.0, 1.0)
    assert accuracy["overall"] == pytest.approx((0.5 + accuracy["significantly better"]) / 2)


def test_response_log_likelihood_is_the_sft_loss_summed_and_padding_changes_nothing():
    torch.manual_seed(0)
    model = tiny_model(seed=4).eval()
    example = tokenize_conversation(TOKENIZER, conversation("abc", "de"), "x:1")
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([example.input_ids])).logits
        mean_loss = prompt_masked_lm_loss(logits, torch.tensor([example.labels]))
    answer_tokens = 3  # "d", "e", EOS
    alone = response_log_likelihoods(model, TOKENIZER, ["abc"], ["de"])
    torch.testing.assert_close(alone, -mean_loss.reshape(1) * answer_tokens)
    batched = response_log_likelihoods(model, TOKENIZER, ["abc", "a"], ["de", "longer answer"])
    torch.testing.assert_close(batched[:1], alone)


def test_likelihood_ranking_is_antisymmetric_and_counts_ties_half():
    model = tiny_model(seed=5).eval()
    pairs = [
        PreferencePair("abc", chosen, rejected, rating, "helpfulness", False, "a", "b")
        for chosen, rejected, rating in [
            ("cba", "hhhh", "better"),
            ("x", "yz", "better"),
            ("d", "d", "slightly better"),
        ]
    ]
    swapped = [dataclasses.replace(p, chosen=p.rejected, rejected=p.chosen) for p in pairs]
    forward = likelihood_accuracy_by_rating(model, TOKENIZER, pairs)
    backward = likelihood_accuracy_by_rating(model, TOKENIZER, swapped)
    assert forward["slightly better"] == backward["slightly better"] == 0.5
    assert forward["better"] + backward["better"] == pytest.approx(1.0)
    assert forward["overall"] + backward["overall"] == pytest.approx(1.0)


def test_ranking_accuracy_per_rating_on_hand_scores():
    pairs = [
        PreferencePair("p", chosen, rejected, rating, "helpfulness", False, "a", "b")
        for chosen, rejected, rating in [
            ("long", "x", "better"),  # longer wins: right
            ("y", "long", "better"),  # wrong
            ("ab", "cd", "significantly better"),  # tie: half
        ]
    ]

    def by_length(prompts: list[str], responses: list[str]) -> torch.Tensor:
        return torch.tensor([float(len(r)) for r in responses])

    accuracy = ranking_accuracy_by_rating(by_length, pairs, batch_size=2)
    assert accuracy == {"better": 0.5, "significantly better": 0.5, "overall": 0.5}


def test_the_linear_head_fit_reaches_the_hand_optimum():
    # pair differences +1, +1, -1: the loss 2 softplus(-w) + softplus(w) is least where
    # sigmoid(w) = 2/3, at w = log 2
    chosen, rejected = torch.tensor([[1.0], [1.0], [0.0]]), torch.tensor([[0.0], [0.0], [1.0]])
    weights, loss = fit_linear_head(chosen.double(), rejected.double(), torch.zeros(3), l2=0.0)
    assert weights.item() == pytest.approx(math.log(2), abs=1e-6)
    assert loss == pytest.approx((2 * math.log(1.5) + math.log(3)) / 3, abs=1e-9)
    # a margin on the agreeing pairs asks for a larger weight, centering for a smaller one
    margins = torch.tensor([1.0, 1.0, 0.0])
    assert fit_linear_head(chosen.double(), rejected.double(), margins, l2=0.0)[0] > weights
    centered, _ = fit_linear_head(chosen.double(), rejected.double(), torch.zeros(3), 1.0, 0.0)
    assert 0 < centered.item() < weights.item()


def test_the_probed_head_scores_what_the_features_say_and_ranks_better(tmp_path):
    tiny_model(seed=6).save_pretrained(tmp_path / "policy")
    TOKENIZER.save_pretrained(tmp_path / "policy")
    model, tokenizer = load_reward_model(tmp_path / "policy")
    prompts = ["abc", "de", "hh", "a"] * 4
    chosen = tokenize_pairs(tokenizer, prompts, ["cba", "ed", "h", "aa"] * 4, 64)
    rejected = tokenize_pairs(tokenizer, prompts, ["abcd", "e", "hhhh", "b"] * 4, 64)
    margins = torch.zeros(len(prompts))

    def model_loss() -> float:
        with torch.no_grad():
            rewards = score_encoded(model, *pad_right(chosen + rejected, tokenizer.pad_token_id))
        return margin_ranking_loss(rewards[: len(chosen)], rewards[len(chosen) :], margins).item()

    before = model_loss()
    loss = probe_head(model, chosen, rejected, tokenizer.pad_token_id, margins)
    assert model_loss() == pytest.approx(loss, abs=1e-5)  # the head reads these features
    assert loss < before
    features = last_token_features(model, chosen[:3], tokenizer.pad_token_id)
    with torch.no_grad():
        scores = score_encoded(model, *pad_right(chosen[:3], tokenizer.pad_token_id))
    torch.testing.assert_close(
        scores.double(), features @ model.score.weight[0].double(), rtol=1e-5, atol=1e-5
    )


def test_training_with_a_probed_head_starts_from_the_probe(tmp_path):
    tiny_model(seed=7).save_pretrained(tmp_path / "policy")
    TOKENIZER.save_pretrained(tmp_path / "policy")
    pairs = [
        PreferencePair(prompt, chosen, rejected, "better", "helpfulness", False, "x", "y")
        for prompt, chosen, rejected in [("abc", "cba", "abcd"), ("de", "ed", "e"), ("h", "h", "")]
    ]
    write_preferences(tmp_path / "pairs.jsonl", pairs)
    config = RewardModelConfig(
        policy=str(tmp_path / "policy"),
        train=tmp_path / "pairs.jsonl",
        output_dir=tmp_path / "rm",
        probe_head=True,
        learning_rate=0.0,  # no step moves the weights: the checkpoint is the probe's model
    )
    result = train_reward_model(config)
    model, tokenizer = load_reward_model(result.checkpoint)
    prompts = [p.prompt for p in pairs]
    with torch.no_grad():
        rewards = [
            score(model, tokenizer, prompts, [p.chosen for p in pairs]),
            score(model, tokenizer, prompts, [p.rejected for p in pairs]),
        ]
    margins = margins_for([p.rating for p in pairs], config.margin)
    assert result.probe_loss == pytest.approx(
        margin_ranking_loss(*rewards, margins).item(), abs=1e-5
    )
    unprobed = train_reward_model(
        dataclasses.replace(config, probe_head=False, output_dir=tmp_path / "plain")
    )
    assert unprobed.probe_loss is None


@pytest.fixture
def reward_model_setup(tmp_path) -> RewardModelConfig:
    """A tiny policy and 12 preference pairs: 3 steps of 4 pairs per epoch."""
    tiny_model(seed=7).save_pretrained(tmp_path / "policy")
    TOKENIZER.save_pretrained(tmp_path / "policy")
    texts = [("abc", "cba", "abcd"), ("de", "ed", "e"), ("h", "h", ""), ("fg", "gf", "ff")]
    pairs = [PreferencePair(*t, "better", "helpfulness", False, "x", "y") for t in texts * 3]
    write_preferences(tmp_path / "pairs.jsonl", pairs)
    return RewardModelConfig(
        policy=str(tmp_path / "policy"),
        train=tmp_path / "pairs.jsonl",
        output_dir=tmp_path / "run",
        epochs=2,
        learning_rate=1e-2,
        batch_size=4,
        save_every_steps=2,
    )


def test_a_stopped_reward_model_run_resumes_to_the_uninterrupted_weights(
    reward_model_setup, tmp_path
):
    config = reward_model_setup
    straight = train_reward_model(dataclasses.replace(config, output_dir=tmp_path / "straight"))
    train_reward_model(config, stop_after_steps=3)
    assert checkpoints(config.output_dir)[-1].name == "checkpoint-000003"
    resumed = train_reward_model(config)
    assert resumed.steps == straight.steps == 6
    assert resumed.losses == straight.losses[3:]  # it ran only the steps after the checkpoint
    assert_identical_weights(straight.checkpoint, resumed.checkpoint)


def test_a_reward_model_run_killed_with_sigkill_resumes_to_the_same_weights(
    reward_model_setup, tmp_path
):
    config = dataclasses.replace(reward_model_setup, epochs=8)
    straight = train_reward_model(dataclasses.replace(config, output_dir=tmp_path / "straight"))
    killed_at = killed_mid_run("reward_model.train_reward_model", config)
    assert killed_at < straight.steps == 24  # killed mid-way
    resumed = train_reward_model(config)
    assert resumed.losses == straight.losses[killed_at:]
    assert_identical_weights(straight.checkpoint, resumed.checkpoint)


def test_bf16_scores_train_the_reward_model_to_nearly_the_float32_losses(
    reward_model_setup, tmp_path
):
    full = train_reward_model(dataclasses.replace(reward_model_setup, output_dir=tmp_path / "32"))
    half = train_reward_model(
        dataclasses.replace(reward_model_setup, output_dir=tmp_path / "16", bf16=True)
    )
    assert half.losses != full.losses  # the scores were computed in bfloat16
    assert half.losses[0] == pytest.approx(full.losses[0], rel=0.01)  # the same weights
    assert half.losses[-1] < half.losses[0]  # and it learns as float32 does
    weights = load_file(half.checkpoint / "model.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())


def test_the_other_categorys_share_of_training_pairs_is_drawn_as_asked(tmp_path):
    def pair(category: str, index: int) -> PreferencePair:
        return PreferencePair(f"p{index}", "a", "b", "better", category, False, "x", "y")

    pairs = [pair("safety", i) for i in range(9)] + [pair("helpfulness", i) for i in range(5)]
    config = RewardModelConfig(policy="", train=tmp_path / "t.jsonl", output_dir=tmp_path)

    def drawn(category: str, share: float, seed: int = 0) -> list[PreferencePair]:
        chosen = training_pairs(
            pairs,
            dataclasses.replace(config, category=category, other_category_share=share, seed=seed),
        )
        assert all(p.category == category for p in chosen[:9])  # its own pairs first, all
        return chosen

    assert drawn("safety", 0.0) == pairs[:9]
    mixed = drawn("safety", 0.1)  # 10% of 10 pairs: 9 safety + 1 helpfulness
    assert len(mixed) == 10 and mixed[-1].category == "helpfulness"
    assert mixed == drawn("safety", 0.1) and len(drawn("safety", 0.5)) == 9 + 5  # all there are
    by_seed = {tuple(p.prompt for p in drawn("safety", 0.3, seed=seed)[9:]) for seed in range(8)}
    assert len(by_seed) > 1  # the seed picks which
    with pytest.raises(ValueError, match="other_category_share"):
        drawn("safety", 1.0)
    with pytest.raises(ValueError, match=r"t\.jsonl: no pairs of category 'neither'"):
        drawn("neither", 0.1)


def test_saving_a_step_again_replaces_its_checkpoint(tmp_path):
    """A stage re-run after a kill between its save and its record writes the same step."""
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    save_checkpoint(tmp_path, 7, first, TOKENIZER, {"step": 7})
    path = save_checkpoint(tmp_path, 7, second, TOKENIZER, {"step": 7})
    saved = load_file(path / "model.safetensors")
    assert torch.equal(saved["model.embed_tokens.weight"], second.model.embed_tokens.weight)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # nothing staged or set aside


def test_a_pair_longer_than_max_length_is_refused_with_its_file_and_prompt(tmp_path):
    tiny_model().save_pretrained(tmp_path / "policy")
    TOKENIZER.save_pretrained(tmp_path / "policy")
    fits = PreferencePair("ab", "c", "d", "better", "helpfulness", False, "x", "y")
    too_long = dataclasses.replace(fits, prompt="abc" * 40)
    write_preferences(tmp_path / "pairs.jsonl", [fits, too_long])
    config = RewardModelConfig(
        policy=str(tmp_path / "policy"),
        train=tmp_path / "pairs.jsonl",
        output_dir=tmp_path / "rm",
        max_length=64,
    )
    with pytest.raises(
        ValueError, match=r"pairs\.jsonl \(helpfulness pairs\): pair 1 \(prompt 'abcabc"
    ):
        train_reward_model(config)
    assert not (tmp_path / "rm").exists()  # nothing half-written
