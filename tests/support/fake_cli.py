"""A stand-in for a LightningCLI script (and the RunRecorder compare adds), for fast `bninit compare` tests.

Understands only what compare passes: the subcommand, `--seed_everything`, `--trainer.callbacks.path`,
`--trainer.callbacks.checkpoint_dir` (where it writes its checkpoint, as RunRecorder makes every ModelCheckpoint do),
`--trainer.callbacks.save_last`, `--trainer.default_root_dir`, `--ckpt_path`, `--trainer.callbacks.test_path` (then it
tests right after fit, as with `test: in_fit`, unless `--fake.test_after_fit=false`) and `--bninit.<option>=` (echoed
as test metrics `echo_<option>`; gamma0 and c move the accuracy a little), plus test switches:

- `--fake.acc=A`: the test accuracy's base;
- `--fake.fail=fit|test`: exit with code 3 in that stage (in test also when $FAKE_FAIL_ARG is one of the arguments);
  `--fake.crash=fit|test`: abort (SIGABRT) in that stage;
- `--fake.sleep=SECONDS` (in fit; `--fake.sleep_test=` in test);
- `--fake.no_checkpoint=true`: report no checkpoint; `--fake.ckpt_outside=PATH`: write the checkpoint there instead;
- `--fake.drop=METRIC`: do not log that test metric.

Every invocation is appended to $FAKE_CALLS; each stage writes `<stage>.pid` and `<stage>_env.json` (its pid, parent
pid, and the W&B and thread variables it got) into the run folder.
"""

import json
import math
import os
import sys
import time
from pathlib import Path

args = dict(a[2:].split("=", 1) for a in sys.argv[2:] if a.startswith("--") and "=" in a)
stage = sys.argv[1]
seed = int(args["seed_everything"])
out = Path(args["trainer.callbacks.path"])
run_dir = out.parent
with open(os.environ["FAKE_CALLS"], "a") as fh:
    fh.write(f"{stage} {seed} {args.get('fake.acc', '')}\n")
(run_dir / f"{stage}.pid").write_text(str(os.getpid()))
seen = {k: v for k, v in os.environ.items() if k.startswith("WANDB_") or k == "OMP_NUM_THREADS"}
(run_dir / f"{stage}_env.json").write_text(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "env": seen}))
time.sleep(float(args.get("fake.sleep" if stage == "fit" else "fake.sleep_test", 0)))
if args.get("fake.fail") == stage or (stage == "test" and os.environ.get("FAKE_FAIL_ARG") in sys.argv):
    print("simulated crash in", stage, file=sys.stderr)
    sys.exit(3)
if args.get("fake.crash") == stage:
    print("simulated abort in", stage, file=sys.stderr, flush=True)
    os.abort()


def test_metrics() -> dict:
    base = float(args.get("fake.acc", 0.9))
    # BNInit's options (sweeps) move the accuracy a little, so that grid arms differ
    base += 0.01 * math.log10(float(args.get("bninit.scale_lr_divisor", 1))) - 0.02 * abs(
        math.log10(float(args.get("bninit.init_scale", 1))))
    acc = base + (seed % 7) / 1000 * (1 + base)  # arm-dependent noise: differences vary by seed
    metrics = {"test_acc": acc, "test_loss": 1 - acc}
    for key, value in args.items():
        if key.startswith("bninit."):
            flag = {"true": 1.0, "false": 0.0}.get(value)
            metrics[f"echo_{key[7:]}"] = float(value) if flag is None else flag
    metrics.pop(args.get("fake.drop", ""), None)
    return {"stage": "test", "metrics": metrics}


if stage == "fit" and "trainer.callbacks.test_path" in args and args.get("fake.test_after_fit") != "false":
    Path(args["trainer.callbacks.test_path"]).write_text(json.dumps(test_metrics()))
if stage == "fit":
    ckpt = Path(args.get("fake.ckpt_outside") or Path(args["trainer.callbacks.checkpoint_dir"]) / "model.ckpt")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_text(f"weights of seed {seed}")
    last = None
    if args.get("trainer.callbacks.save_last") == "true":
        last = run_dir / "last_weights.ckpt"
        last.write_text(f"last weights of seed {seed}")
    best = None if args.get("fake.no_checkpoint") == "true" else str(ckpt)
    payload = {"stage": "fit", "best_model_path": best, "last_model_path": str(last) if last else None,
               "log_dir": None, "metrics": {}, "current_epoch": 2, "global_step": 10}
else:
    assert Path(args["ckpt_path"]).exists()
    payload = test_metrics()
out.write_text(json.dumps(payload))
