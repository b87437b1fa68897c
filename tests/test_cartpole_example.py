"""The CartPole example end to end: flags, TensorBoard logs, checkpoint, final JSON line."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch

from textrl.checkpoint import save_atomically

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "cartpole_ppo.py"


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_example_writes_logs_checkpoint_and_ends_with_json(tmp_path, monkeypatch, capsys, env_id):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            str(EXAMPLE),
            "--env-id",
            env_id,
            "--seed",
            "3",
            "--total-steps",
            "4096",
            "--eval-episodes",
            "3",
            "--no-progress",
        ],
    )
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last_line)
    assert set(result) == {"env_id", "seed", "env_steps", "seconds", "eval_mean_return"}
    assert result["env_id"] == env_id and result["seed"] == 3
    assert result["env_steps"] >= 4096
    checkpoint = tmp_path / "checkpoints" / f"{env_id}-seed3.pt"
    state = torch.load(checkpoint, weights_only=False)
    assert "algorithm" in state and state["config"].env_id == env_id
    assert any((tmp_path / "runs" / f"{env_id}-seed3").glob("events.out.tfevents.*"))


def test_atomic_save_leaves_the_old_checkpoint_when_writing_fails(tmp_path):
    path = tmp_path / "model.pt"
    save_atomically({"version": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError, match="cannot pickle"):
        save_atomically({"version": 2, "bad": Unpicklable()}, path)
    assert torch.load(path)["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left behind
