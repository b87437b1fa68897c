"""examples/reward_model_scaling.py: which models a round drew its pairs from."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "reward_model_scaling.py"
round_models = runpy.run_path(str(EXAMPLE), run_name="reward_model_scaling")["round_models"]


def ledger_of(versions: list[str], rounds_with_preferences: int) -> dict:
    ledger = {f"evaluate {name}": {"result": {"checkpoint": f"ck/{name}"}} for name in versions}
    for index in range(1, rounds_with_preferences + 1):
        ledger[f"RLHF-V{index} preferences"] = {"result": {}}
    return ledger


def test_a_round_draws_from_the_two_latest_versions_before_it():
    ledger = ledger_of(["SFT", "RLHF-V1", "RLHF-V2", "RLHF-V3"], 3)
    assert round_models(ledger, 1) == [("SFT", "ck/SFT")]
    assert round_models(ledger, 2) == [("RLHF-V1", "ck/RLHF-V1"), ("SFT", "ck/SFT")]
    assert round_models(ledger, 3) == [("RLHF-V2", "ck/RLHF-V2"), ("RLHF-V1", "ck/RLHF-V1")]


def test_an_unfinished_round_is_refused_with_what_is_missing():
    with pytest.raises(ValueError, match=r"\['RLHF-V2'\] are not evaluated"):
        round_models(ledger_of(["SFT", "RLHF-V1"], 3), 3)
    with pytest.raises(ValueError, match="round 2 has not finished its preferences"):
        round_models(ledger_of(["SFT", "RLHF-V1"], 1), 2)
