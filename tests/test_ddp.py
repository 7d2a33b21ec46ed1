"""DDP with two processes: every rank ends with the same parameters; only rank zero warns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support.launch import run_script, script_env


def run_ddp(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    proc = run_script("ddp_fit.py", tmp_path, *args, cwd=tmp_path, env=script_env(PYTHONWARNINGS="default"))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    return ranks, proc.stdout + proc.stderr


def check_treated_and_identical(ranks: list[dict], output: str, buffers_too: bool) -> None:
    state0, state1 = ranks[0]["state"], ranks[1]["state"]
    keys = [k for k in state0 if buffers_too or not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for key in keys:
        assert torch.equal(state0[key], state1[key]), key
    # Treated: initialized to 0.1 and moved only a little; the pretrained-looking layer kept its value.
    assert (state0["net.1.weight"] - 0.1).abs().max() < 0.01
    assert (state0["net.9.weight"] - 0.5).abs().max() < 0.01
    assert "bninit_input_norm.weight" in state0
    assert output.count("left the values of 1 BN layer") == 1


@pytest.mark.slow
def test_ddp_two_cpu_ranks(tmp_path: Path) -> None:
    ranks, output = run_ddp(tmp_path)
    check_treated_and_identical(ranks, output, buffers_too=False)  # BN statistics stay per rank without sync
    assert ranks[0]["bn_types"] == ["BatchNorm1d", "BatchNorm2d", "InputNorm"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="SyncBatchNorm across processes needs two GPUs")
def test_ddp_sync_batchnorm_on_two_gpus(tmp_path: Path) -> None:
    ranks, output = run_ddp(tmp_path, "gpu")
    check_treated_and_identical(ranks, output, buffers_too=True)  # synced statistics: buffers agree as well
    assert ranks[0]["bn_types"] == ["SyncBatchNorm"]
