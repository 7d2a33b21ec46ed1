"""A stand-in for a LightningCLI script, for fast `bninit compare` tests.

Understands only what compare passes: the subcommand, `--seed_everything`, `--trainer.callbacks.path`,
`--trainer.default_root_dir`, `--ckpt_path`, `--trainer.callbacks.test_path` (then it tests right after fit, as
with `test: in_fit`, unless `--fake.test_after_fit=false`), plus test switches `--fake.acc=`,
`--fake.fail=fit|test` and `--fake.sleep=SECONDS`. Every invocation is appended to $FAKE_CALLS.
"""

import json
import os
import sys
import time
from pathlib import Path

args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--") and "=" in a)
stage = sys.argv[1]
seed = int(args["seed_everything"])
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(f"{stage} {seed} {args.get('fake.acc', '')}\n")
time.sleep(float(args.get("fake.sleep", 0)))
if args.get("fake.fail") == stage:
    print("simulated crash in", stage, file=sys.stderr)
    sys.exit(3)
out = Path(args["trainer.callbacks.path"])


def test_metrics() -> dict:
    base = float(args.get("fake.acc", 0.9))
    acc = base + (seed % 7) / 1000 * (1 + base)  # arm-dependent noise: differences vary by seed
    return {"stage": "test", "metrics": {"test_acc": acc, "test_loss": 1 - acc}}


if stage == "fit" and "trainer.callbacks.test_path" in args and args.get("fake.test_after_fit") != "false":
    Path(args["trainer.callbacks.test_path"]).write_text(json.dumps(test_metrics()))
if stage == "fit":
    ckpt = Path(args["trainer.default_root_dir"]) / "model.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text("weights")
    payload = {"stage": "fit", "best_model_path": str(ckpt), "last_model_path": None, "log_dir": None, "metrics": {}}
else:
    assert Path(args["ckpt_path"]).exists()
    payload = test_metrics()
out.write_text(json.dumps(payload))
