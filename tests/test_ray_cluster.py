"""`launcher: ray` on a real two-node Ray cluster, not a mock.

tests/support/ray_cluster.py runs inside network and PID namespaces that this test makes (`unshare --net --pid
--fork --mount-proc`, only the loopback interface up), so that the cluster uses 127.0.0.1 and no traffic leaves it,
and every process it starts ends with the namespace. It starts a head and a worker node with token
authentication, runs a compare whose trials land on both nodes, kills the worker node mid-trial (the trial is recorded
as failed with the reason), starts a new worker node and reruns with one more seed and `retries: 1` (the worker node
is killed mid-trial again and Ray runs that trial again on the head node): every pair ends up finished exactly once.
A third run, with a fifth seed, is interrupted (SIGINT) mid-trial: its tasks are cancelled and nothing is written.
Needs root, `unshare` and Ray (`pip install -e .[ray]`); skipped without them, except in CI (`CI=true`), where it
fails instead. About 1 to 3 minutes on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.launch import ROOT, SUPPORT


def _missing() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install -e '.[ray]')"
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux, to make a network namespace"
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare (util-linux) and ip (iproute2)"
    return None


@pytest.fixture(scope="module")
def cluster_run():
    why = _missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the real-cluster test of launcher: ray must run in CI: {why}")
        pytest.skip(why)
    work = Path(tempfile.mkdtemp(prefix="bnray", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        summary = work / "summary.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(SUPPORT)])}
        proc = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount-proc", sys.executable,
                               str(SUPPORT / "ray_cluster.py"), str(work), str(summary)],
                              capture_output=True, text=True, timeout=900, env=env)
        result = json.loads(summary.read_text()) if summary.exists() else {}
        assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{json.dumps(result)[-4000:]}"
        yield result, work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pairs(lines: list[dict], finished: bool = True) -> list[tuple[int, str]]:
    return sorted((r["seed"], r["arm"]) for r in lines if ("error" not in r) == finished)


def test_a_node_that_dies_mid_trial_fails_that_trial_and_the_rerun_completes_every_pair_once(cluster_run):
    run, work = cluster_run
    # Token authentication is on: a driver with another token is refused, in one line, and writes nothing.
    refused = run["wrong_token"]
    last = refused["stderr"].strip().splitlines()[-1]
    assert refused["rc"] == 2 and not refused["wrote"] and last.startswith("bninit: error: cannot connect to the Ray "
                                                                           "cluster at 127.0.0.1:6379")
    # Run 1 (retries: 0): trials ran on both nodes; the one on the killed worker node failed, with the reason.
    first = run["run1_lines"]
    assert run["run1_rc"] == 1 and len(first) == 6
    nodes = {r["config"]["ray_node_id"] for r in first if "error" not in r}
    assert len(nodes) == 2 and run["worker_node_id"] in nodes
    failed = [r for r in first if "error" in r]
    killed = run["run1_kill"]["killed_trial"].split("/")[-2:]  # .../<arm>/seed_<n>
    assert [(f["arm"], f"seed_{f['seed']}") for f in failed] == [tuple(killed)]
    assert "the trial's Ray task was lost after 1 attempt(s)" in failed[0]["error"]
    assert "NodeDiedError" in failed[0]["error"] or "WorkerCrashedError" in failed[0]["error"]
    # Run 2 (a new worker node, one more seed, retries: 1): the worker node died mid-trial again, Ray ran that
    # trial again elsewhere, and now every pair is finished exactly once; the failed line of run 1 stays.
    lines = run["lines"]
    assert run["run2_rc"] == 0 and lines[:6] == first
    pairs = [(s, a) for s in range(1, 5) for a in ("bninit", "standard")]
    assert _pairs(lines) == pairs and _pairs(lines, finished=False) == _pairs(first, finished=False)
    retried = run["run2_kill"]["killed_trial"].split("/")[-2:]
    again = next(r for r in lines if (r["arm"], f"seed_{r['seed']}") == tuple(retried) and "error" not in r)
    assert again["config"]["ray_node_id"] != run["worker2_node_id"]  # it finished on the head node
    for rec in lines:
        if "error" not in rec:  # each trial's log is in the driver's trial folder, the line names its node
            assert rec["config"]["launcher"] == "ray" and rec["config"]["ray_node_id"]
            run_dir = Path(rec["config"]["run_dir"])  # (the trials share this machine's filesystem)
            assert (run_dir / "fit.log").is_file() and (run_dir / "fit.cmd").is_file() and (run_dir / "test.log").is_file()


def test_ctrl_c_cancels_the_running_trials_and_writes_nothing(cluster_run):
    run, _ = cluster_run
    stop = run["run3_interrupt"]
    assert stop["rc"] == 130 and stop["left"] == []  # compare ended; the trial's processes died with their task
    assert run["run3_lines"] == run["lines"]  # no line for the fifth seed
    assert "bninit: interrupted" in run["compare3.log"]
