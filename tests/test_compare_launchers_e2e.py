"""End to end on the digits example: the fork launcher gives exactly the results of fresh processes, and parallel
trials with a fixed ModelCheckpoint dirpath each test their own checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_bninit.experiments.command import main

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"
TINY = ("args: [--trainer.max_epochs=2, --trainer.limit_train_batches=4, --trainer.limit_val_batches=1,"
        " --trainer.limit_test_batches=1, --trainer.num_sanity_val_steps=0]\n")


def _lines(path: Path) -> dict[tuple[int, str], dict]:
    return {(r["seed"], r["arm"]): r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
def test_fork_launcher_results_equal_fresh_processes_and_each_trial_tests_its_own_checkpoint(tmp_path):
    shared = tmp_path / "shared_ckpts"
    (tmp_path / "shared.yaml").write_text(
        "trainer:\n  callbacks:\n  - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n    init_args:\n"
        f"      dirpath: {shared}\n      filename: best\n      monitor: val_acc\n      mode: max\n")
    head = (f"script: {DIGITS / 'main.py'}\nconfig: [{DIGITS / 'base.yaml'}, shared.yaml]\n"
            f"metrics: [test_acc, test_loss]\nseeds: 1\npreload: [sklearn.datasets]\n{TINY}")
    (tmp_path / "fresh.yaml").write_text(head + "launcher: subprocess\n")
    (tmp_path / "forked.yaml").write_text(head + "launcher: fork\n")
    for name in ("fresh", "forked"):
        assert main(["compare", "--config", str(tmp_path / f"{name}.yaml"), "--out", str(tmp_path / f"{name}.jsonl"),
                     "--parallel", "2", "--no-progress"]) == 0
    fresh, forked = _lines(tmp_path / "fresh.jsonl"), _lines(tmp_path / "forked.jsonl")
    assert sorted(fresh) == sorted(forked) == [(1, "bninit"), (1, "standard")]  # two trials at once
    for key, rec in forked.items():
        assert rec["config"]["launcher"] == "fork" and fresh[key]["config"]["launcher"] == "subprocess"
        for metric in ("test_acc", "test_loss"):
            assert rec[metric] == fresh[key][metric], (key, metric)  # bit for bit
        assert rec["config"]["fit_metrics"] == fresh[key]["config"]["fit_metrics"]
        for rec_ in (rec, fresh[key]):  # its own checkpoint, not one in the shared folder
            assert rec_["config"]["ckpt_path"] == str(Path(rec_["config"]["run_dir"]) / "checkpoints" / "best.ckpt")
    assert not shared.exists() or not any(shared.iterdir())
