"""A script for the launcher tests: reports what process it runs in, as JSON, to the path given as its first argument.

    probe_app.py OUT.json [--threads N] [--exit CODE] [--raise] [--sleep S]

`--threads N` sets OMP_NUM_THREADS with `os.environ.setdefault` before importing torch (as examples/digits/main.py
does) and reports `torch.get_num_threads()`.
"""

import json
import os
import sys
import time

out, flags = sys.argv[1], sys.argv[2:]


def flag(name, default=None):
    return flags[flags.index(name) + 1] if name in flags else default


info = {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(),
        "name": __name__, "probe_env": os.environ.get("PROBE_ENV"), "worker_only": os.environ.get("WORKER_ONLY"),
        "sid": os.getsid(0)}
if flag("--threads"):
    os.environ.setdefault("OMP_NUM_THREADS", flag("--threads"))
    import torch

    info["threads"] = torch.get_num_threads()
with open(out, "w") as fh:
    json.dump(info, fh)
print("probe stdout", flush=True)
print("probe stderr", file=sys.stderr, flush=True)
time.sleep(float(flag("--sleep", 0)))
if "--raise" in flags:
    raise RuntimeError("probe failed on purpose")
sys.exit(int(flag("--exit", 0)))
