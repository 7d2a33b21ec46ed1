"""Reading a results file of ``bninit compare`` for the report: every line checked, bad ones named by number."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RESERVED_KEYS", "ReportError", "Results", "RunRecord", "load_results"]


class ReportError(ValueError):
    """Bad input for the report; the message is meant for the user as is."""


#: Keys of a results line that are not metrics.
#: Keys of a results line that are not metrics (``bninit compare`` stores a metric of such a name as
#: ``metric_<name>``).
RESERVED_KEYS = frozenset({"seed", "arm", "config", "duration_s", "error", "derived_seed", "status"})


@dataclass
class RunRecord:
    """One line of a results file."""

    line: int
    seed: int
    arm: str
    metrics: dict[str, Any]
    error: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Results:
    """A parsed results file.

    Attributes:
        path: the file read.
        runs: the finished runs (no ``error`` key).
        failed: the runs recorded as failed.
        bad_lines: ``(line number, message)`` of the lines that could not be used (only non-empty
            when loading with ``skip_bad_lines=True``).
    """

    path: str
    runs: list[RunRecord] = field(default_factory=list)
    failed: list[RunRecord] = field(default_factory=list)
    bad_lines: list[tuple[int, str]] = field(default_factory=list)

    @property
    def arms(self) -> list[str]:
        """Arm names of the finished runs, in order of first appearance."""
        return list(dict.fromkeys(r.arm for r in self.runs))

    @property
    def all_arms(self) -> list[str]:
        """Arm names of every usable line, finished or failed, in order of first appearance."""
        return list(dict.fromkeys(r.arm for r in sorted(self.runs + self.failed, key=lambda r: r.line)))

    def only(self, arms: list[str] | None = None, seeds: list[int] | None = None) -> Results:
        """The same file restricted to ``arms`` and/or ``seeds`` (finished and failed lines alike; ``None`` keeps
        all), e.g. one question of a file that several ``bninit compare --arms ... --seeds ...`` calls wrote.

        Raises:
            ValueError: an arm, or a seed, that has no line in the file (the message names it and what the file has).
        """
        runs, failed = list(self.runs), list(self.failed)
        if arms is not None:
            unknown = [arm for arm in arms if arm not in self.all_arms]
            if unknown:
                raise ValueError(f"arm(s) {unknown} have no line in {self.path}; its arms: {', '.join(self.all_arms)}")
            runs, failed = [r for r in runs if r.arm in arms], [r for r in failed if r.arm in arms]
        if seeds is not None:
            present = sorted({r.seed for r in runs + failed})
            missing = [seed for seed in seeds if seed not in present]
            if missing:
                raise ValueError(f"seed(s) {missing} have no line in {self.path} (of the arms kept); its seeds: "
                                 f"{_seed_ranges(present)}")
            runs, failed = [r for r in runs if r.seed in seeds], [r for r in failed if r.seed in seeds]
        return Results(path=self.path, runs=runs, failed=failed, bad_lines=list(self.bad_lines))


def _seed_ranges(seeds: list[int]) -> str:
    """Ascending ``[1, 2, 3, 7]`` as ``1-3,7`` (the form ``--seeds`` takes)."""
    runs: list[list[int]] = []
    for seed in seeds:
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs) or "none"


def _parse_line(lineno: int, raw: bytes, last: bool) -> RunRecord:
    truncated = last and not raw.endswith(b"\n")
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        if truncated:
            raise ReportError(f"line {lineno}: truncated (the file ends in the middle of this line)") from None
        raise ReportError(f"line {lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(obj, dict):
        raise ReportError(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    seed, arm = obj.get("seed"), obj.get("arm")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ReportError(f"line {lineno}: 'seed' must be an integer, got {seed!r}")
    if not isinstance(arm, str) or not arm:
        raise ReportError(f"line {lineno}: 'arm' must be a non-empty string, got {arm!r}")
    error = obj.get("error")
    metrics = {k: v for k, v in obj.items() if k not in RESERVED_KEYS}
    config = obj.get("config")
    return RunRecord(line=lineno, seed=seed, arm=arm, metrics=metrics, error=None if error is None else str(error),
                     config=config if isinstance(config, dict) else {})


def load_results(path: str | Path, *, skip_bad_lines: bool = False) -> Results:
    """Read a results JSONL file.

    Args:
        path: the file written by ``bninit compare``.
        skip_bad_lines: leave malformed lines out (they are listed in ``Results.bad_lines``)
            instead of failing on them.

    Returns:
        The finished and the failed runs.

    Raises:
        ReportError: the file is missing or unreadable, or (unless ``skip_bad_lines``) a line is
            malformed or truncated; a finished (seed, arm) pair appears twice. Messages name the
            line numbers.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ReportError(f"results file not found: {path}") from None
    except OSError as err:
        raise ReportError(f"cannot read results file {path}: {err.strerror}") from None
    results = Results(path=str(path))
    lines = data.splitlines(keepends=True)
    errors: list[str] = []
    seen: dict[tuple[int, str], int] = {}
    for idx, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = _parse_line(idx, raw, last=idx == len(lines))
        except ReportError as err:
            if skip_bad_lines:
                results.bad_lines.append((idx, str(err)))
                continue
            errors.append(str(err))
            continue
        if record.error is not None:
            results.failed.append(record)
            continue
        key = (record.seed, record.arm)
        if key in seen:
            errors.append(
                f"line {idx}: seed {record.seed} of arm '{record.arm}' already finished on line {seen[key]}"
                " (results of different experiments mixed in one file?)"
            )
            continue
        seen[key] = idx
        results.runs.append(record)
    if errors:
        shown = "\n  ".join(errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        hint = "\n(use --skip-bad-lines to leave malformed lines out)" if not skip_bad_lines else ""
        raise ReportError(f"{path}: {len(errors)} bad line(s):\n  {shown}{more}{hint}")
    return results
