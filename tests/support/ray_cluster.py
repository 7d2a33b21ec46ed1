"""The real-cluster check of ``launcher: ray``; run only by tests/test_ray_cluster.py, inside a network namespace (and
PID namespace) of its own with only the loopback interface, so that every Ray process uses 127.0.0.1 and nothing
leaves it (outside such a namespace Ray binds all interfaces and probes an outside address to pick its own).

    unshare --net --pid --fork --mount-proc python ray_cluster.py WORKDIR SUMMARY.json

Starts a head node and a worker node (``ray start``, token authentication on), checks that a driver with a wrong
token is refused, runs a small ``bninit compare`` whose trials land on both nodes, kills the worker node (its raylet
and every process under it) in the middle of a trial, starts a new worker node and reruns (one more seed, retries
on) with the worker node killed mid-trial again, interrupts a third run (SIGINT) in the middle of a trial, stops the
cluster and writes what happened to SUMMARY.json for the test to check. Every wait is bounded; the namespace's processes all end with it.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

SUPPORT = Path(__file__).resolve().parent
ROOT = SUPPORT.parents[1]
HEAD_PORT, WORKER_PORT = 6379, 6401  # the namespace's own loopback: no clash with anything outside it
ADDRESS = f"127.0.0.1:{HEAD_PORT}"
COMMON = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]


def _only_loopback() -> None:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout.splitlines()
    names = [line.split(":")[1].strip() for line in links]
    if names != ["lo"]:
        raise SystemExit(f"not in a network namespace of loopback only: interfaces {names}")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _env(work: Path) -> dict[str, str]:
    token = work / "token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0", HOME=str(work),
               PYTHONPATH=os.pathsep.join([str(ROOT), str(SUPPORT)]), FAKE_CALLS=str(work / "calls.txt"),
               # a dead node is noticed within seconds, not the default half minute
               RAY_health_check_initial_delay_ms="1000", RAY_health_check_period_ms="1000",
               RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="3")
    (work / "calls.txt").touch()
    return env


def _ray(args: list[str], env: dict[str, str], timeout: float = 180) -> None:
    proc = subprocess.run(["ray", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise SystemExit(f"ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, command line) of this PID namespace's processes."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                out[int(entry.name)] = (ppid, (entry / "cmdline").read_bytes().decode(errors="replace").split("\0"))
            except (OSError, IndexError, ValueError):
                continue
    return out


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, left to this namespace's first process, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _fits() -> list[int]:
    """The trial processes in their fit (fake_cli.py fit) on any node."""
    return [pid for pid, (_, cmd) in _processes().items()
            if any(a.endswith("fake_cli.py") for a in cmd) and "fit" in cmd and _alive(pid)]


def _worker_raylet() -> tuple[int, str]:
    """The worker node's raylet (the one on WORKER_PORT) and its node id."""
    for pid, (_, cmd) in _processes().items():
        if cmd and cmd[0].endswith("/raylet") and f"--node_manager_port={WORKER_PORT}" in cmd:
            node_id = next(a.split("=", 1)[1] for a in cmd if a.startswith("--node_id="))
            return pid, node_id
    raise SystemExit("the worker node's raylet is not running")


def _descendants(root: int) -> list[int]:
    procs, found, frontier = _processes(), [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, (ppid, _) in procs.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _experiment(work: Path, retries: int) -> Path:
    (work / "base.yaml").write_text("trainer: {}\n")
    path = work / f"exp_retries{retries}.yaml"
    path.write_text(
        f"script: {SUPPORT / 'fake_cli.py'}\nconfig: base.yaml\nmetrics: [test_acc]\nseeds: 1-3\nlauncher: ray\n"
        f"ray: {{address: '{ADDRESS}', cpus: 1, retries: {retries}}}\n"
        "arms:\n  standard: [--fake.acc=0.90, --fake.sleep=3]\n  bninit: [--fake.acc=0.95, --fake.sleep=3]\n")
    return path


def _compare(exp: Path, out: Path, env: dict[str, str], log: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lightning_bninit", "compare", "--config", str(exp), "--out", str(out),
           "--no-progress", *extra]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=exp.parent)


def _kill_worker_mid_trial(out: Path, worker: tuple[int, str], driver: subprocess.Popen, deadline: float,
                           after_one_finished: bool) -> dict:
    """Once a trial has finished on the worker node (if ``after_one_finished``), wait for one there to be in its
    fit, then SIGKILL the node: its raylet and everything under it (its Ray workers, the trial's processes)."""
    raylet, node_id = worker
    while time.monotonic() < deadline and driver.poll() is None:
        if not after_one_finished or any(r.get("config", {}).get("ray_node_id") == node_id for r in _lines(out)):
            for pid in _descendants(raylet):
                cmd = _processes().get(pid, (0, []))[1]
                if any(a.endswith("fake_cli.py") for a in cmd) and "fit" in cmd:
                    run_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--trainer.callbacks.path="))
                    for victim in [raylet, *_descendants(raylet)]:
                        try:
                            os.kill(victim, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                    return {"killed_trial": str(Path(run_dir).parent), "killed_node": node_id}
        time.sleep(0.1)
    raise SystemExit(f"no trial was running on the worker node after one had finished there (compare: exit code "
                     f"{driver.poll()})")


def _interrupt_mid_trial(driver: subprocess.Popen, deadline: float) -> dict:
    """Ctrl-C (SIGINT) to compare while a trial is in its fit: compare ends, the trial's processes are gone."""
    while time.monotonic() < deadline and driver.poll() is None:
        running = _fits()
        if running:
            driver.send_signal(signal.SIGINT)
            start = time.monotonic()
            rc = driver.wait(timeout=120)
            while time.monotonic() - start < 60 and any(_alive(pid) for pid in running):
                time.sleep(0.1)
            return {"rc": rc, "left": [pid for pid in running if _alive(pid)],
                    "stopped_in_s": round(time.monotonic() - start, 1)}
        time.sleep(0.1)
    raise SystemExit(f"no trial was in its fit before compare ended (exit code {driver.poll()})")


def _wrong_token_refused(exp: Path, work: Path, env: dict[str, str]) -> dict:
    """A driver without the cluster's token gets one line from bninit compare, not a connection or a hang."""
    wrong = work / "wrong_token"
    wrong.write_text(secrets.token_hex(32))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "lightning_bninit", "compare", "--config", str(exp), "--out",
                           str(work / "refused.jsonl"), "--no-progress"], capture_output=True, text=True,
                          timeout=120, env={**env, "RAY_AUTH_TOKEN_PATH": str(wrong)}, cwd=work)
    return {"rc": proc.returncode, "stderr": proc.stderr[-2000:], "seconds": round(time.monotonic() - start, 1),
            "wrote": (work / "refused.jsonl").exists()}


def main() -> None:
    work, summary_path = Path(sys.argv[1]), Path(sys.argv[2])
    summary: dict = {"started": time.time()}
    _only_loopback()
    env = _env(work)
    t0 = time.monotonic()
    _ray(["start", "--head", f"--port={HEAD_PORT}", "--include-dashboard=false", f"--temp-dir={work / 'ray'}",
          *COMMON], env)
    _ray(["start", f"--address={ADDRESS}", f"--node-manager-port={WORKER_PORT}", *COMMON], env)
    summary["cluster_start_s"] = round(time.monotonic() - t0, 1)
    worker = _worker_raylet()
    summary["worker_node_id"] = worker[1]
    no_retry, retry, out = _experiment(work, 0), _experiment(work, 1), work / "results.jsonl"
    try:
        summary["wrong_token"] = _wrong_token_refused(no_retry, work, env)
        # 1. retries: 0. The worker node dies mid-trial: that trial is recorded as failed, the others finish.
        t1 = time.monotonic()
        first = _compare(no_retry, out, env, work / "compare1.log")
        summary["run1_kill"] = _kill_worker_mid_trial(out, worker, first, time.monotonic() + 150, True)
        summary["run1_rc"] = first.wait(timeout=180)
        summary["run1_s"] = round(time.monotonic() - t1, 1)
        summary["run1_lines"] = _lines(out)
        # 2. A new worker node; the rerun, with one more seed and retries: 1: the failed pair and the new ones
        # run, the worker node dies again mid-trial, and Ray runs that trial again on the head node.
        _ray(["start", f"--address={ADDRESS}", f"--node-manager-port={WORKER_PORT}", *COMMON], env)
        worker = _worker_raylet()
        summary["worker2_node_id"] = worker[1]
        t2 = time.monotonic()
        second = _compare(retry, out, env, work / "compare2.log", "--seeds", "1-4")
        summary["run2_kill"] = _kill_worker_mid_trial(out, worker, second, time.monotonic() + 150, False)
        summary["run2_rc"] = second.wait(timeout=180)
        summary["run2_s"] = round(time.monotonic() - t2, 1)
        summary["lines"] = _lines(out)
        # 3. Ctrl-C in the middle of a trial of a fifth seed: its tasks are cancelled and nothing is written.
        third = _compare(retry, out, env, work / "compare3.log", "--seeds", "1-5")
        summary["run3_interrupt"] = _interrupt_mid_trial(third, time.monotonic() + 150)
        summary["run3_lines"] = _lines(out)
    finally:
        for name in ("compare1.log", "compare2.log", "compare3.log"):
            summary[name] = (work / name).read_text()[-4000:] if (work / name).exists() else ""
        summary_path.write_text(json.dumps(summary, indent=1))
        subprocess.run(["ray", "stop", "--force"], env=env, capture_output=True, timeout=60)
    summary["total_s"] = round(time.monotonic() - t0, 1)
    summary_path.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
