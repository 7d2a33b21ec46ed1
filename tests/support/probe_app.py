"""A script for the launcher tests: reports what process it runs in, as JSON, to the path given as its first argument.

    probe_app.py OUT.json [--threads N] [--exit CODE] [--exit-text TEXT] [--raise] [--interrupt] [--sleep S]
                          [--at-exit]

`--threads N` sets OMP_NUM_THREADS with `os.environ.setdefault` before importing torch (as examples/digits/main.py
does) and reports `torch.get_num_threads()`. `--at-exit` registers an atexit handler and starts a non-daemon thread
that each write a file next to OUT (`OUT.atexit`, `OUT.thread`) when the interpreter exits.
"""

import atexit
import json
import os
import sys
import threading
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
if "--at-exit" in flags:
    atexit.register(lambda: open(out + ".atexit", "w").write("ran"))
    thread_file = open(out + ".thread", "w")  # noqa: SIM115 - written by the thread, closed by it
    threading.Thread(target=lambda: (time.sleep(1.0), thread_file.write("joined"), thread_file.close())).start()
if "--raise" in flags:
    raise RuntimeError("probe failed on purpose")
if "--interrupt" in flags:
    raise KeyboardInterrupt
if flag("--exit-text"):
    sys.exit(flag("--exit-text"))
sys.exit(int(flag("--exit", 0)))
