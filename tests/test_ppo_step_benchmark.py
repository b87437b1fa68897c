"""The PPO-step benchmark's arithmetic: phases add up, ratios are floor over phase."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from ppo_step import ITERATION, Measurement, combined, summarize, with_iteration  # noqa: E402


def test_the_iteration_adds_the_phases_seconds_and_keeps_the_largest_peak():
    phases = {
        "generation": Measurement(seconds=2.0, peak_rss_mb=10.0),
        "scoring": Measurement(seconds=1.0, peak_rss_mb=30.0),
        "update": Measurement(seconds=3.0, peak_rss_mb=20.0),
    }
    assert combined(list(phases.values())) == Measurement(seconds=6.0, peak_rss_mb=30.0)
    assert with_iteration(phases) == {**phases, ITERATION: Measurement(6.0, 30.0)}


def test_rows_take_medians_and_divide_the_floor_by_the_phase():
    phases = {"update": [Measurement(4.0, 5.0), Measurement(2.0, 7.0), Measurement(3.0, 6.0)]}
    floors = {"update": [Measurement(1.0, 1.0), Measurement(3.0, 2.0), Measurement(2.0, 9.0)]}
    (row,) = summarize("tiny", 8, 33, 16, 2, phases, floors)
    assert (row.model, row.batch, row.phase) == ("tiny", 8, "update")
    assert (row.seconds, row.floor_seconds) == (3.0, 2.0)
    assert row.ratio == pytest.approx(2.0 / 3.0)
    assert row.tokens_per_s == pytest.approx(8 * 16 / 3.0)
    assert row.floor_tokens_per_s == pytest.approx(8 * 16 / 2.0)
    assert (row.peak_rss_mb, row.floor_peak_rss_mb) == (7.0, 9.0)
    assert (row.prompt_tokens, row.new_tokens, row.threads) == (33, 16, 2)
