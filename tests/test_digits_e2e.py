"""End to end: `bninit compare` on the digits example, then `bninit report` (tiny budget, CI-sized)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"


def test_compare_then_report_on_digits(tmp_path):
    exp = tmp_path / "exp.yaml"
    exp.write_text(
        f"script: {DIGITS / 'main.py'}\nconfig: {DIGITS / 'base.yaml'}\nmetrics: [test_acc, test_loss]\n"
        "args: [--trainer.max_epochs=1, --trainer.limit_train_batches=4, --trainer.limit_val_batches=1,"
        " --trainer.limit_test_batches=1, --trainer.num_sanity_val_steps=0]\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "results.jsonl"
    bninit = [sys.executable, "-m", "lightning_bninit"]
    proc = subprocess.run([*bninit, "compare", "--config", str(exp), "--seeds", "1-2", "--arms", "standard,bninit",
                           "--parallel", "2", "--out", str(out), "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((r["seed"], r["arm"]) for r in recs) == [(1, "bninit"), (1, "standard"), (2, "bninit"),
                                                           (2, "standard")]
    for rec in recs:
        assert 0 <= rec["test_acc"] <= 1 and rec["test_loss"] > 0
        assert (rec["config"]["fit_epochs"], rec["config"]["fit_steps"]) == (1, 4)
        resolved = rec["config"]["resolved"]["bninit"]  # the run's own saved LightningCLI config
        if rec["arm"] == "standard":
            assert (resolved["init_scale"], resolved["scale_lr_divisor"]) == (1.0, 1.0)
        else:
            assert resolved is True  # `--bninit=true`: the callback's defaults
    # test_loss is continuous, so the paired differences cannot tie by accident
    rep = subprocess.run([*bninit, "report", str(out), "--metric", "test_loss", "--alternative", "less", "--json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stderr
    report = json.loads(rep.stdout)
    assert report["n_pairs"] == 2 and report["baseline"] == "standard" and report["treatment"] == "bninit"
