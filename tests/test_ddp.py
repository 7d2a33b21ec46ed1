"""DDP with two CPU processes (gloo): every rank ends with the same parameters; only rank zero warns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.slow
def test_ddp_two_cpu_ranks(tmp_path: Path) -> None:
    script = Path(__file__).with_name("ddp_fit.py")
    env = {**os.environ, "PYTHONWARNINGS": "default", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    params = [k for k in ranks[0] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for key in params:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    # Treated: initialized to 0.1 and moved only a little; the pretrained-looking layer kept its value.
    assert (ranks[0]["net.1.weight"] - 0.1).abs().max() < 0.01
    assert (ranks[0]["net.9.weight"] - 0.5).abs().max() < 0.01
    assert "bninit_input_norm.weight" in ranks[0]
    assert (proc.stdout + proc.stderr).count("left the values of 1 BN layer") == 1
