"""Masked mean / variance / whitening against numpy on the valid entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from textrl.masked import masked_mean, masked_variance, masked_whiten

finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@st.composite
def values_and_mask(draw, min_valid=1):
    shape = draw(st.tuples(st.integers(1, 5), st.integers(2, 8)))
    values = draw(arrays(np.float64, shape, elements=finite))
    mask = draw(arrays(np.bool_, shape))
    flat = mask.reshape(-1)
    flat[:min_valid] = True
    return values, mask.reshape(shape)


@settings(max_examples=150, deadline=None)
@given(values_and_mask(min_valid=2))
def test_masked_statistics_equal_numpy_on_valid_entries(data):
    values, mask = data
    valid = values[mask]
    t_values, t_mask = torch.tensor(values), torch.tensor(mask, dtype=torch.float64)
    np.testing.assert_allclose(
        masked_mean(t_values, t_mask).item(), valid.mean(), rtol=1e-9, atol=1e-9
    )
    np.testing.assert_allclose(
        masked_variance(t_values, t_mask).item(), valid.var(ddof=1), rtol=1e-8, atol=1e-8
    )


@settings(max_examples=150, deadline=None)
@given(values_and_mask(min_valid=2))
def test_whitened_valid_entries_have_zero_mean_unit_variance_and_padding_is_zero(data):
    values, mask = data
    if np.ptp(values[mask]) < 1e-3:
        return  # constant data has no scale to normalise
    t_mask = torch.tensor(mask, dtype=torch.float64)
    whitened = masked_whiten(torch.tensor(values), t_mask, eps=0.0).numpy()
    assert abs(whitened[mask].mean()) < 1e-8
    np.testing.assert_allclose(whitened[mask].var(ddof=1), 1.0, rtol=1e-6)
    assert (whitened[~mask] == 0).all()


def test_whiten_without_mean_shift_keeps_the_mean():
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    whitened = masked_whiten(values, mask, shift_mean=False, eps=0.0)
    assert torch.allclose(whitened[0, :3], torch.tensor([1.0, 2.0, 3.0]))


def test_empty_mask_is_an_error_not_a_silent_nan():
    with pytest.raises(ValueError, match="selects no step"):
        masked_mean(torch.ones(2, 2), torch.zeros(2, 2))
