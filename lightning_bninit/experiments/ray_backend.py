"""``launcher: ray``: each (seed, arm) trial of ``bninit compare`` as one Ray task, on a Ray cluster or a local one.

The driver (``bninit compare``) submits one task per missing pair, each asking for the experiment's ``ray: {cpus,
gpus}``; Ray places them on the cluster's nodes. A task runs the trial there as :func:`~lightning_bninit.experiments.
trial.run_trial` does locally (fresh processes of the trial's ``fit`` and ``test``, which die with the task's worker)
and returns the results line, the id of the node it ran on and the trial's logs. The driver alone appends to the
results file, one line per finished task, and writes the logs into its own trial folder, so a rerun skips finished
pairs as with the other launchers. A task whose worker node dies is run again ``ray.retries`` times by Ray, then
recorded as failed with the reason (a rerun of the same command runs it again). Ctrl-C cancels the running tasks.

Ray is imported here only, when this backend runs; without it the message names the ``[ray]`` extra. Nothing here
starts a dashboard or a job server: with no address, the local Ray listens on 127.0.0.1 only, without dashboard.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

from lightning_bninit import _extras
from lightning_bninit.experiments.launchers import SubprocessLauncher
from lightning_bninit.experiments.spec import Experiment, ExperimentError
from lightning_bninit.experiments.trial import plan_trial, run_trial, trial_env

Pair = tuple[int, str]
_CONNECT_TIMEOUT_S = 5.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: The files of a trial folder that come back to the driver's (checkpoints stay where the trial ran).
_RETURNED = ("fit.log", "test.log", "fit.cmd", "test.cmd")


def _host_port(address: str) -> tuple[str, str]:
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    return host.strip("[]"), port


def check_reachable(address: str, timeout_s: float = _CONNECT_TIMEOUT_S) -> None:
    """Fail fast, in one line naming it, when nothing accepts connections at ``address`` (``host:port``)."""
    host, port = _host_port(address)
    if not host or not port.isdigit():
        raise ExperimentError(f"Ray address {address!r} is not host:port (e.g. 10.1.2.3:6379) or 'auto'; "
                              "pass the head node's address with --address or `ray: {address: ...}`")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ExperimentError(f"cannot reach the Ray cluster at {address}: {err.strerror or err}; start its head "
                              "(`ray start --head`, see docs/cluster.md) or pass the right --address") from None


def connect(ray: Any, address: str | None) -> None:
    """``ray.init`` on ``address`` (``auto``: the cluster this machine belongs to), or a local Ray on 127.0.0.1
    without dashboard when ``address`` is ``None``; one line naming the address when that fails."""
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
    if address is None:
        options.update(_node_ip_address="127.0.0.1", include_dashboard=False)
    elif address != "auto":
        check_reachable(address)
        if _host_port(address)[0] in _LOOPBACK:  # a cluster on this machine: no need to look for this node's address
            options["_node_ip_address"] = "127.0.0.1"
    try:
        ray.init(address=address, **options)
    except Exception as err:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, AuthenticationError...
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ExperimentError(f"cannot connect to {where}: {first}; is it up, and does this machine have the "
                              "cluster's token (RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, see docs/cluster.md)?"
                              ) from None


def token_auth_off() -> bool:
    """Whether this process talks to Ray without token authentication (``RAY_AUTH_MODE`` other than ``token``)."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:  # another Ray than the one this was written for: say nothing
        return False
    return get_authentication_mode() != AuthenticationMode.TOKEN


def run_trials(exp: Experiment, todo: list[Pair], runs_dir: Path, address: str | None = None,
               warn: Callable[[str], None] = print) -> Iterator[tuple[Pair, dict[str, Any] | None]]:
    """Run the pairs as Ray tasks; yields each pair with its results line as its task ends (``None``: cancelled).

    Closing the generator (Ctrl-C in the loop that reads it) cancels the tasks still running.
    """
    ray = _extras.require("ray", "launcher: ray")
    connect(ray, address if address is not None else exp.ray.address)
    if token_auth_off():
        warn("Ray token authentication is off (RAY_AUTH_MODE): whoever reaches the cluster's ports can run code on "
             "it; turn it on and keep the ports behind the cluster's firewall (docs/cluster.md)")
    pending: dict[Any, Pair] = {}
    try:
        task = ray.remote(num_cpus=exp.ray.cpus, num_gpus=exp.ray.gpus, max_retries=exp.ray.retries,
                          retry_exceptions=False)(_trial_task)
        for seed, arm in todo:
            ref = task.options(name=f"bninit {exp.name} seed {seed} {arm}").remote(exp, seed, arm, str(runs_dir))
            pending[ref] = (seed, arm)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in done:
                pair = pending.pop(ref)
                yield pair, _collect(ray, ref, pair, exp)
    finally:
        for ref in pending:  # interrupted: nothing of these is written
            with suppress(Exception):
                ray.cancel(ref, force=True)
        ray.shutdown()


def _collect(ray: Any, ref: Any, pair: Pair, exp: Experiment) -> dict[str, Any] | None:
    """The results line of a finished task (its logs written into the driver's trial folder), or of a failed one."""
    seed, arm = pair
    try:
        out = ray.get(ref)
    except ray.exceptions.TaskCancelledError:
        return None
    except ray.exceptions.RayTaskError as err:  # the task itself raised (e.g. the trial folder is not writable)
        return _failed(pair, f"the trial's Ray task raised {_first_line(err.cause or err)}")
    except ray.exceptions.RayError as err:  # its worker or node died, also on every retry
        return _failed(pair, f"the trial's Ray task was lost after {exp.ray.retries + 1} attempt(s) (its worker "
                             f"node died or its worker crashed): {_first_line(err)}; run the same command again "
                             "to rerun it", exp.ray.retries)
    run_dir = Path(out["run_dir"])
    for name, text in out["logs"].items():
        path = run_dir / name
        with suppress(OSError):
            if not (path.is_file() and path.read_text(errors="replace") == text):  # not on a shared filesystem
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    record = out["record"]
    record["config"]["ray_node_id"] = out["node_id"]
    record["config"]["ray_host"] = out["host"]
    return record


def _first_line(err: BaseException) -> str:
    """``Type: first sentence`` of an exception (Ray's messages go on for lines)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    name = type(err).__name__
    first = lines[0].removeprefix(f"{name}: ").split(". ")[0].rstrip(".")[:300] if lines else ""
    return f"{name}: {first}" if first else name


def _failed(pair: Pair, why: str, retries: int | None = None) -> dict[str, Any]:
    config = {} if retries is None else {"ray_retries": retries}
    return {"seed": pair[0], "arm": pair[1], "error": why, "duration_s": 0.0, "config": config}


def _trial_task(exp: Experiment, seed: int, arm: str, runs_dir: str) -> dict[str, Any]:
    """On a Ray worker: run one trial with this node's Python and environment (Ray's ``CUDA_VISIBLE_DEVICES`` and
    ``OMP_NUM_THREADS`` for the task's resources); its phases are killed with the worker (a node that dies)."""
    import ray

    from lightning_bninit.experiments.compare import child_env

    exp = dataclasses.replace(exp, command=[sys.executable, *exp.command[1:]])
    plan = plan_trial(exp, seed, arm, Path(runs_dir))
    record = run_trial(exp, plan, SubprocessLauncher(exp.timeout_s, die_with_parent=True),
                       trial_env(exp, seed, arm, child_env(exp, 1, [])))
    assert record is not None  # only a stopping launcher gives None
    logs = {name: (plan.run_dir / name).read_text(errors="replace") for name in _RETURNED
            if (plan.run_dir / name).is_file()}
    return {"record": record, "logs": logs, "run_dir": str(plan.run_dir),
            "node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
