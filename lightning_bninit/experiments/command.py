"""The ``bninit`` console command: ``bninit compare`` and ``bninit report`` (argument parsing and exit codes).

Exit codes: 0 success; 1 some compare runs failed; 2 bad input or a missing optional package (one
``bninit: error: ...`` line or a short block naming the bad lines, never a traceback); 130 interrupted.
Imports neither torch nor Lightning, so ``bninit --help`` and ``bninit report`` start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from lightning_bninit.experiments.launchers import LAUNCHERS

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bninit",
        description="Paired-seed experiments for Revisiting Batch Norm Initialization (Davis & Frank, ECCV 2022).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="{compare,report}")
    sub.required = True

    cmp = sub.add_parser("compare", help="run every (seed, arm) pair as LightningCLI fit + test",
                         description="Run every (seed, arm) pair as its own LightningCLI `fit` then `test` and "
                                     "append one JSON line per run. Rerunning skips finished pairs.")
    cmp.add_argument("--config", required=True, metavar="EXP_YAML", help="experiment file (script, base config, arms)")
    cmp.add_argument("--seeds", help="e.g. 1-15 or 1,3,5 (default: `seeds:` of the experiment file)")
    cmp.add_argument("--arms", help="comma-separated arm names (default: standard,bninit)")
    cmp.add_argument("--parallel", type=int, default=1, metavar="N", help="trials at once (default 1)")
    cmp.add_argument("--out", default="results.jsonl", help="JSONL results file (default results.jsonl)")
    cmp.add_argument("--runs-dir", help="directory for run outputs (default: <out stem>_runs)")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bar")
    cmp.add_argument("--dry-run", action="store_true",
                     help="print the arms (name and overrides), then the commands of the missing runs, and exit")
    cmp.add_argument("--launcher", choices=LAUNCHERS,
                     help="how each run's processes start: a fresh Python each (subprocess), forked from a server "
                          "that imports torch and Lightning once (fork), or each trial a task on a Ray cluster (ray); "
                          "default: `launcher:` of the experiment file, else auto (fork on Linux without GPUs)")
    cmp.add_argument("--address", metavar="HOST:PORT",
                     help="with --launcher ray: the Ray cluster's head (host:port, or auto); default: `ray: "
                          "{address:}` of the experiment file, else a local Ray on 127.0.0.1 (docs/cluster.md)")
    cmp.add_argument("--report-metric", metavar="METRIC",
                     help="print the report for METRIC when done (default: `report:` of the experiment file)")

    rep = sub.add_parser("report", help="paired significance report of a results file",
                         description="Per-arm summary, paired differences, one-sided paired t-test (the paper's) and "
                                     "its confidence interval, Wilcoxon and a bootstrap CI as robustness checks, "
                                     "Cohen's d_z, pairs for 80% power and a verdict. Without --treatment, every "
                                     "arm is compared with the baseline (Holm-corrected), unless the file holds "
                                     "only the baseline and bninit (then: bninit vs the baseline).")
    rep.add_argument("results", help="JSONL file written by `bninit compare`")
    rep.add_argument("--metric", required=True, help="metric to compare, e.g. test_acc")
    rep.add_argument("--baseline", default="standard", help="reference arm (default standard)")
    rep.add_argument("--treatment", default=None,
                     help="compare only this arm with the baseline (two-arm report); default: bninit if the file "
                          "has no other arm, else every arm with Holm's correction")
    rep.add_argument("--arms", metavar="A,B,...",
                     help="report only these arms of the file (the baseline among them), e.g. one question of a file "
                          "that several `bninit compare --arms` calls wrote; default: every arm")
    rep.add_argument("--seeds", metavar="SEEDS",
                     help="report only these seeds, e.g. 101-104 or 1,3,5 (pairs are still matched by seed); "
                          "default: every seed")
    rep.add_argument("--alternative", choices=["greater", "less", "two-sided"], default="greater",
                     help="H1 for treatment vs baseline: greater (default, higher is better), less (e.g. a loss)")
    rep.add_argument("--alpha", type=float, default=0.05,
                     help="significance level of the verdict (family-wise across arms) and 1 - CI level "
                          "(default 0.05)")
    rep.add_argument("--json", action="store_true", help="print one JSON object instead of Markdown")
    rep.add_argument("--plot", metavar="FILE", help="also save a PNG: the paired differences (two arms) or the "
                                                   "metric against init_scale, a line per scale_lr_divisor (all arms)")
    rep.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (default 10000)")
    rep.add_argument("--skip-bad-lines", action="store_true", help="leave malformed lines out instead of failing")
    return parser


def _version() -> str:
    from lightning_bninit import __version__  # the package root is lazy: this imports neither torch nor Lightning

    return __version__


def _report(args: argparse.Namespace) -> int:
    from lightning_bninit.experiments.multiarm import MultiArmReport, format_report, report_of
    from lightning_bninit.experiments.report import plot_differences
    from lightning_bninit.experiments.results import load_results

    if args.resamples < 100:
        raise _UsageError(f"--resamples must be >= 100, got {args.resamples}")
    results = load_results(args.results, skip_bad_lines=args.skip_bad_lines)
    if args.arms is not None or args.seeds is not None:
        results = _only(results, args.arms, args.seeds, args.baseline)
    report = report_of(results, args.metric, args.baseline, args.treatment, alternative=args.alternative,
                       alpha=args.alpha, n_resamples=args.resamples)
    plot_notes: list[str] | None = None
    if args.plot and isinstance(report, MultiArmReport):
        from lightning_bninit.experiments.grid_plot import plot_grid

        _, plot_notes = plot_grid(report, results, args.plot)
    elif args.plot:
        plot_differences(report, args.plot)
    _print_report(args, report.to_dict(), format_report(report), plot_notes)
    return 0


def _only(results: Any, arms_text: str | None, seeds_text: str | None, baseline: str) -> Any:
    from lightning_bninit.experiments.seeding import parse_seeds

    if arms_text is not None:
        arms = [a.strip() for a in arms_text.split(",")]
        if any(not a for a in arms):
            raise _UsageError(f"--arms: empty arm name in {arms_text!r}")
        if baseline not in arms:
            raise _UsageError(f"--arms {arms_text!r} leaves out the baseline '{baseline}'; add it, or pass --baseline")
        try:
            results = results.only(arms=arms)
        except ValueError as err:
            raise _UsageError(f"--arms: {err}") from None
    if seeds_text is not None:
        try:
            results = results.only(seeds=parse_seeds(seeds_text))
        except ValueError as err:
            raise _UsageError(f"--seeds: {err}") from None
    return results


def _print_report(args: argparse.Namespace, payload: dict[str, Any], markdown: str,
                  plot_notes: list[str] | None) -> None:
    plot_notes = plot_notes or []
    if args.json:
        if args.plot:
            payload["plot"] = args.plot
            if payload.get("comparisons") is not None:
                payload["plot_notes"] = plot_notes
        print(json.dumps(payload, indent=2))
        return
    print(markdown)
    if args.plot:
        print(f"\nplot: {args.plot}")
        for note in plot_notes:
            print(f"> plot note: {note}")


def _seeds_and_arms(args: argparse.Namespace, exp: Any) -> tuple[list[int], list[str]]:
    from lightning_bninit.experiments.seeding import parse_seeds

    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else exp.seeds
    except ValueError as err:
        raise _UsageError(f"--seeds: {err}") from None
    if seeds is None:
        raise _UsageError(f"no seeds: pass --seeds (e.g. 1-15) or set 'seeds:' in {exp.path}")
    arms = [a.strip() for a in args.arms.split(",")] if args.arms else exp.default_arms
    if any(not a for a in arms):
        raise _UsageError(f"--arms: empty arm name in {args.arms!r}")
    arms = [exp.grid_aliases.get(a, a) for a in arms]  # g1_c1 of a grid is `standard`
    return seeds, list(dict.fromkeys(arms))


def _dry_run(args: argparse.Namespace, exp: Any, seeds: list[int], arms: list[str]) -> int:
    import shlex
    from pathlib import Path

    from lightning_bninit.experiments.results_file import ResultsFile
    from lightning_bninit.experiments.trial import plan_trial

    exp.check_arms(arms)
    out = Path(args.out)
    runs_dir = Path(args.runs_dir) if args.runs_dir else out.with_name(out.stem + "_runs")
    done = ResultsFile(out).finished()
    aliases = {arm: name for name, arm in exp.grid_aliases.items()}
    print(f"# arms ({len(arms)}):")
    for arm in arms:
        also = f"  (grid point {aliases[arm]})" if arm in aliases else ""
        print(f"#   {arm}: {shlex.join(exp.arms[arm]) or '(no overrides)'}{also}")
    print("# commands of the runs not yet finished:")
    for seed in seeds:
        for arm in arms:
            if (seed, arm) not in done:
                plan = plan_trial(exp, seed, arm, runs_dir)
                print(shlex.join(plan.fit))
                if not exp.test_in_fit:
                    print(shlex.join(plan.test + ["--ckpt_path=<checkpoint of fit>"]))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from lightning_bninit.experiments.spec import load_experiment

    exp = load_experiment(args.config)
    seeds, arms = _seeds_and_arms(args, exp)
    if args.dry_run:
        return _dry_run(args, exp, seeds, arms)
    from lightning_bninit.experiments.compare import run_compare

    counts = run_compare(exp, seeds, arms, args.out, parallel=args.parallel, runs_dir=args.runs_dir,
                         progress=not args.no_progress, launcher=args.launcher,
                         address=args.address)
    print(f"compare: {counts['ok']} finished, {counts['failed']} failed, {counts['skipped']} already done "
          f"(of {counts['total']}); results in {args.out}", file=sys.stderr)
    metric = args.report_metric or exp.report.get("metric")
    if metric:
        _end_of_compare_report(args.out, metric, exp.report)
    return 1 if counts["failed"] else 0


def _end_of_compare_report(out: str, metric: str, options: dict[str, Any]) -> None:
    """The report of ``report:`` (or ``--report-metric``), as ``bninit report`` makes it."""
    from lightning_bninit.experiments.multiarm import format_report, report_of
    from lightning_bninit.experiments.results import ReportError, load_results

    try:
        report = report_of(load_results(out), metric, options.get("baseline", "standard"), options.get("treatment"),
                           alternative=options.get("alternative", "greater"),
                           alpha=float(options.get("alpha", 0.05)))
        print(format_report(report))
    except ReportError as err:
        print(f"bninit: report not available: {err}", file=sys.stderr)


class _UsageError(ValueError):
    pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bninit`` console script.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code (also used with ``sys.exit`` when run as a script).
    """
    from lightning_bninit import _extras
    from lightning_bninit.experiments.results import ReportError
    from lightning_bninit.experiments.spec import ExperimentError

    args = _build_parser().parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        return _report(args)
    except (ReportError, ExperimentError, _UsageError, _extras.MissingExtraError) as err:
        print(f"bninit: error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # an optional package of the [experiments] extra is missing
        print(f"bninit: error: {_extras.message(err.name or 'lightning_bninit', f'bninit {args.command}')}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bninit: interrupted; finished runs are saved, run the same command again to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `bninit report ... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
