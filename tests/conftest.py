"""Shared fixtures: a tiny BN network, deterministic data, and a plain reference training loop."""

from __future__ import annotations

import os

import pytest

# Tests never contact a W&B server.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _quiet_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_DISABLE_FORK", "1")
    # WandbLogger(offline=True) sets WANDB_MODE=dryrun for the process; give every test offline mode afresh.
    monkeypatch.setenv("WANDB_MODE", "offline")


@pytest.fixture(params=["subprocess", "fork"])
def launcher(request: pytest.FixtureRequest) -> str:
    """Both launchers of `bninit compare`; the fork server preloads nothing in these tests (the fake script needs
    neither torch nor Lightning)."""
    return request.param


@pytest.fixture
def fake_calls(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """The file the fake script (``support/fake_cli.py``) appends one line to per call, empty, in ``FAKE_CALLS``."""
    calls = tmp_path / "calls.txt"
    calls.touch()
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    return calls
