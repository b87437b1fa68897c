"""DPO + NLL: the loss against a hand computation, the on-policy pairs on hand cases, and
training that moves the pairs the right way."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.text_fixtures import TOKENIZER, tiny_model
from textrl.lm_losses import dpo_loss
from textrl.preference_optimization import (
    DPOConfig,
    ResponsePair,
    best_against_worst_pairs,
    train_dpo,
)
from textrl.reward_model import response_log_likelihoods


def test_dpo_loss_matches_a_hand_computation():
    # pair 1: chosen +1 over the reference, rejected -1: margin 2
    # pair 2: chosen -0.5, rejected +0.5: margin -1
    loss = dpo_loss(
        torch.tensor([-4.0, -6.5]),
        torch.tensor([-9.0, -2.5]),
        torch.tensor([-5.0, -6.0]),
        torch.tensor([-8.0, -3.0]),
        beta=0.5,
    )
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@given(
    st.lists(st.floats(-20, 20), min_size=4, max_size=4),
    st.floats(-5, 5),
    st.floats(0.01, 2.0),
)
def test_dpo_loss_ignores_a_shift_shared_by_policy_and_reference(values, shift, beta):
    """Only the change from the reference counts: adding the same log-likelihood to the
    policy and the reference of one response leaves the loss unchanged."""
    chosen, rejected, reference_chosen, reference_rejected = (torch.tensor([v]) for v in values)
    base = dpo_loss(chosen, rejected, reference_chosen, reference_rejected, beta)
    shifted = dpo_loss(chosen + shift, rejected, reference_chosen + shift, reference_rejected, beta)
    assert shifted.item() == pytest.approx(base.item(), rel=1e-5, abs=1e-6)


def test_pairs_are_the_best_against_the_worst_without_ties_or_equal_texts():
    prompts = ["p", "q", "r"]
    responses = [["a", "b", "c", "d"], ["x", "y", "z", "w"], ["s", "s", "t", "u"]]
    rewards = np.array(
        [
            [3.0, 1.0, 2.0, 0.0],  # order a, c, b, d
            [1.0, 1.0, 1.0, 1.0],  # every sample ties: no pair
            [2.0, 1.0, 0.0, 0.0],  # s best and second; t and u tie for worst
        ]
    )
    pairs = best_against_worst_pairs(prompts, responses, rewards, pairs_per_prompt=2)
    assert pairs == [
        ResponsePair("p", "a", "d"),
        ResponsePair("p", "c", "b"),
        ResponsePair("r", "s", "u"),  # stable sort: u is the last of the tied worst
        ResponsePair("r", "s", "t"),
    ]
    one = best_against_worst_pairs(prompts[:1], responses[:1], rewards[:1], pairs_per_prompt=1)
    assert one == [ResponsePair("p", "a", "d")]
    # more pairs asked than half the samples: each sample is used once
    assert len(best_against_worst_pairs(prompts[:1], responses[:1], rewards[:1], 5)) == 2
    equal_texts = best_against_worst_pairs(["p"], [["a", "a"]], np.array([[1.0, 0.0]]), 1)
    assert equal_texts == []


def likelihood_margins(model, pairs):
    prompts = [p.prompt for p in pairs]
    chosen = response_log_likelihoods(model, TOKENIZER, prompts, [p.chosen for p in pairs])
    rejected = response_log_likelihoods(model, TOKENIZER, prompts, [p.rejected for p in pairs])
    return chosen, rejected


@pytest.mark.parametrize("nll_coefficient", [0.0, 1.0])
def test_training_moves_every_pair_the_right_way(nll_coefficient):
    torch.manual_seed(0)
    model = tiny_model(seed=3)
    pairs = [
        ResponsePair("abc", "no.", "cab"),
        ResponsePair("hello", "no.", "olleh"),
        ResponsePair("de", "no.", "ed"),
    ]
    before_chosen, before_rejected = likelihood_margins(model, pairs)
    result = train_dpo(
        model,
        TOKENIZER,
        pairs,
        DPOConfig(learning_rate=1e-2, epochs=20, batch_size=2, nll_coefficient=nll_coefficient),
    )
    after_chosen, after_rejected = likelihood_margins(model, pairs)
    gain = (after_chosen - after_rejected) - (before_chosen - before_rejected)
    assert (gain > 0).all(), gain
    assert result.final_accuracy == 1.0 and result.final_mean_margin > 0
    assert result.steps == 20 * 2 and result.last_loss < result.first_loss
    if nll_coefficient:  # the likelihood term raises the chosen responses themselves
        assert (after_chosen > before_chosen).all(), (before_chosen, after_chosen)


def test_the_nll_term_raises_the_chosen_responses_more_than_plain_dpo():
    """Why the term: DPO only widens the gap between the two responses, so the mass it
    takes from the rejected one need not go to the chosen one; the term puts it there. The
    pairs share their first tokens, where the two gradients pull against each other."""
    pairs = [ResponsePair("abc", "no way.", "no wa"), ResponsePair("hi", "no way.", "no wa")]
    config = DPOConfig(learning_rate=1e-2, epochs=15, batch_size=2)
    results = {}
    for coefficient in (0.0, 1.0):
        torch.manual_seed(0)
        model = tiny_model(seed=3)
        before, _ = likelihood_margins(model, pairs)
        train_dpo(model, TOKENIZER, pairs, dataclasses.replace(config, nll_coefficient=coefficient))
        after, _ = likelihood_margins(model, pairs)
        results[coefficient] = (after - before).mean().item()
    assert results[1.0] > 0
    assert results[1.0] > results[0.0]


def test_nll_weights_scale_each_pairs_likelihood_term():
    """Weight 0 trains a pair by DPO alone (the pipeline's borderline pairs), weight 1 as
    the default; a mix differs from both."""
    pairs = [ResponsePair("abc", "no way.", "no wa"), ResponsePair("hi", "yes.", "ye")]
    config = DPOConfig(learning_rate=1e-2, epochs=3, batch_size=2)

    def trained(coefficient: float, weights: list[float] | None) -> torch.Tensor:
        torch.manual_seed(0)
        model = tiny_model(seed=3)
        train_dpo(
            model,
            TOKENIZER,
            pairs,
            dataclasses.replace(config, nll_coefficient=coefficient),
            nll_weights=weights,
        )
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    default = trained(1.0, None)
    assert torch.equal(trained(1.0, [0.0, 0.0]), trained(0.0, None))
    assert torch.equal(trained(1.0, [1.0, 1.0]), default)
    mixed = trained(1.0, [1.0, 0.0])
    assert not torch.equal(mixed, default) and not torch.equal(mixed, trained(0.0, None))
    with pytest.raises(ValueError, match="one NLL weight per pair: 1 for 2 pairs"):
        train_dpo(tiny_model(seed=3), TOKENIZER, pairs, config, nll_weights=[1.0])


def test_training_without_pairs_is_refused():
    with pytest.raises(ValueError, match="at least one preference pair"):
        train_dpo(tiny_model(seed=3), TOKENIZER, [], DPOConfig())
