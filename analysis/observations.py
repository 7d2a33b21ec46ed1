"""The paper's two observations, measured by the BN monitor on the runs of a `bninit compare` experiment.

    # 1. from the runs' CSV logs (<runs>/<arm>/seed_<n>/fit/lightning_logs/version_0/metrics.csv) to a small JSONL
    python analysis/observations.py extract docs/results/vgg_cifar10/e25_runs --results docs/results/vgg_cifar10/e25.jsonl \
        --out docs/results/observations/vgg_e25_layers.jsonl
    # 2. from that JSONL (committed) to the figure and the table
    python analysis/observations.py plot docs/results/observations/vgg_e25_layers.jsonl \
        --png docs/results/observations/observations.png --md docs/results/observations/observations.md

The runs must log every statistic (``BNMonitor(full=True)``; 0.2's keys ``bn/<layer>/<stat>`` are read too).
One JSON line per (arm, seed, layer): the layer's initial scale gamma0 (the arm's init_scale; times 0.58 for the input
BN), the final mean |gamma - gamma0| and |beta - beta0| (last logged step), the peak |x̂| over all logged steps, the
bound sqrt(m - 1) for that layer (m as recorded, or xhat_absmax / xhat_bound_ratio for 0.2 logs), the peak ratio, and the largest |x̂| one would
expect from m standard-normal values, sqrt(2 ln m), for scale.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

RELU_STD = 0.58
INPUT_BN = "bninit_input_norm"


def _init_scale(overrides: list[str]) -> float:
    for item in overrides:
        if item.startswith("--bninit.init_scale="):
            return float(item.split("=", 1)[1])
    return 0.1  # BNInit's default


def _network_order(name: str) -> tuple[int, ...]:
    """The input BN first, then by the module indices in the name (the CSV log sorts its columns by name)."""
    return (0,) if name == INPUT_BN else (1, *(int(p) for p in name.split(".") if p.isdigit()))


def _columns(header: list[str]) -> dict[str, dict[str, str]]:
    """Per layer (network order), per statistic, its CSV column: ``bn_<stat>/<label>`` (0.3, the label is the
    layer's index and its name with dots as underscores) or ``bn/<layer>/<stat>`` (0.2)."""
    found: dict[str, dict[str, str]] = defaultdict(dict)
    order: dict[str, tuple[int, ...]] = {}
    for key in header:
        if key.startswith("bn/") and not key.startswith("bn/all/") and key.count("/") == 2:
            _, layer, stat = key.split("/")
            order[layer] = _network_order(layer)
        elif key.startswith("bn_") and "/" in key and not key.startswith(("bn_alert/", "bn_hist")):
            stat, label = key[3:].split("/", 1)
            index, layer = label.split("_", 1)
            order[layer] = (0, int(index))
        else:
            continue
        found[layer][stat] = key
    return {layer: found[layer] for layer in sorted(found, key=order.__getitem__)}


def _column(rows: list[dict[str, str]], key: str) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]


def _layer_record(rows: list[dict[str, str]], layer: str, columns: dict[str, str], gamma0: float) -> dict[str, Any]:
    missing = {"scale_drift", "shift_drift", "xhat_absmax", "xhat_bound_ratio", "scale_mean"} - set(columns)
    if missing:
        raise SystemExit(f"{layer}: no {sorted(missing)} in the log; record the runs with BNMonitor(full=True)")
    key = columns.__getitem__
    drift, shift = _column(rows, key("scale_drift")), _column(rows, key("shift_drift"))
    xhat, ratio = _column(rows, key("xhat_absmax")), _column(rows, key("xhat_bound_ratio"))
    if "m" in columns:  # recorded per layer since 0.3
        m = round(statistics.median(v for _, v in _column(rows, key("m"))))
        bound = math.sqrt(m - 1)
    else:
        bound = statistics.median(x / r for (_, x), (_, r) in zip(xhat, ratio) if r > 0)
        m = round(bound**2 + 1)
    return {
        "layer": layer, "gamma0": gamma0, "final_step": drift[-1][0],
        "final_scale_drift": drift[-1][1], "final_shift_drift": shift[-1][1],
        "final_scale_mean": _column(rows, key("scale_mean"))[-1][1],
        "peak_xhat": max(v for _, v in xhat), "peak_ratio": max(v for _, v in ratio),
        "sqrt_m_minus_1": bound, "m": m, "gaussian_max": math.sqrt(2 * math.log(m)),
        "logged_steps": len(xhat),
    }


def extract(runs_dir: Path, results: Path, out: Path) -> int:
    """Write one line per (arm, seed, layer) for every finished run of ``results`` (its runs under ``runs_dir``)."""
    lines = []
    for line in results.read_text().splitlines():
        run = json.loads(line)
        if "error" in run:
            continue
        csv_path = runs_dir / run["arm"] / f"seed_{run['seed']}" / "fit" / "lightning_logs" / "version_0" / "metrics.csv"
        with open(csv_path) as fh:
            rows = list(csv.DictReader(fh))
        init = _init_scale(run["config"]["overrides"] + run["config"]["args"])
        for layer, columns in _columns(list(rows[0])).items():
            gamma0 = init * RELU_STD if layer == INPUT_BN else init
            lines.append({"arm": run["arm"], "seed": run["seed"], **_layer_record(rows, layer, columns, gamma0)})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return len(lines)


def _summary(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """Per (arm, layer): mean over seeds of each measured value."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        grouped[(r["arm"], r["layer"])].append(r)
    out = {}
    for key, rs in grouped.items():
        out[key] = {k: statistics.fmean(r[k] for r in rs) for k in (
            "gamma0", "final_scale_drift", "final_shift_drift", "peak_xhat", "peak_ratio", "sqrt_m_minus_1",
            "gaussian_max")}
        out[key]["max_peak_xhat"] = max(r["peak_xhat"] for r in rs)
        out[key]["seeds"] = len(rs)
    return out


def table(records: list[dict[str, Any]]) -> str:
    """Markdown: one row per (arm, layer), means over seeds."""
    rows = ["| arm | layer | γ₀ | mean \\|γ − γ₀\\| | relative to γ₀ | mean \\|β − β₀\\| | peak \\|x̂\\| | sqrt(m − 1) "
            "| peak / sqrt(m − 1) | sqrt(2 ln m) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (arm, layer), s in _summary(records).items():
        rows.append(f"| {arm} | {layer} | {s['gamma0']:.3g} | {s['final_scale_drift']:.4f} | "
                    f"{s['final_scale_drift'] / s['gamma0']:.1%} | {s['final_shift_drift']:.4f} | "
                    f"{s['peak_xhat']:.1f} | {s['sqrt_m_minus_1']:.0f} | {s['peak_ratio']:.3f} | "
                    f"{s['gaussian_max']:.2f} |")
    return "\n".join(rows)


def figure(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = _summary(records)
    arms = sorted({a for a, _ in summary}, key=lambda a: a != "standard")
    layers = list(dict.fromkeys(layer for _, layer in summary))
    x = range(len(layers))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        offs = [v + (i - (len(arms) - 1) / 2) * width for v in x]
        rel = [summary[(arm, lay)]["final_scale_drift"] / summary[(arm, lay)]["gamma0"] for lay in layers]
        axes[0].bar(offs, rel, width, label=arm)
        axes[1].bar(offs, [summary[(arm, lay)]["final_shift_drift"] for lay in layers], width, label=arm)
        axes[2].bar(offs, [summary[(arm, lay)]["peak_xhat"] for lay in layers], width, label=f"peak |x̂|, {arm}")
    axes[2].plot(list(x), [summary[(arms[0], lay)]["sqrt_m_minus_1"] for lay in layers], "k_", ms=18,
                 label="bound sqrt(m − 1)")
    axes[2].plot(list(x), [summary[(arms[0], lay)]["gaussian_max"] for lay in layers], "kx",
                 label="Gaussian max sqrt(2 ln m)")
    axes[2].set_yscale("log")
    titles = ("final mean |γ − γ₀| / γ₀", "final mean |β − β₀| (β₀ = 0)", "peak |x̂| over training (log scale)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=10)
        ax.set_xticks(list(x), layers, rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle("BN monitor, final values (means over seeds)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def extract_or_plot(description: str, inputs: list[str], extract_fn: Any,
                    argv: list[str] | None, **plot_options: Any) -> argparse.Namespace | None:
    """The command line of a runs-to-JSONL-to-figure script: ``extract RUNS --results R --out J`` runs
    ``extract_fn`` and returns ``None``; ``plot INPUTS... --png P --md M`` (and ``plot_options``, name to default)
    returns the parsed arguments."""
    ap = argparse.ArgumentParser(description=description)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract")
    ex.add_argument("runs_dir", type=Path)
    ex.add_argument("--results", type=Path, required=True)
    ex.add_argument("--out", type=Path, required=True)
    pl = sub.add_parser("plot")
    for name in inputs:
        pl.add_argument(name, type=Path)
    for name, default in plot_options.items():
        pl.add_argument(f"--{name}", default=default)
    pl.add_argument("--png", type=Path, required=True)
    pl.add_argument("--md", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "extract":
        print(f"{extract_fn(args.runs_dir, args.results, args.out)} lines -> {args.out}")
        return None
    return args


def main(argv: list[str] | None = None) -> None:
    args = extract_or_plot(__doc__.splitlines()[0], ["records"], extract, argv)
    if args is None:
        return
    records = [json.loads(line) for line in args.records.read_text().splitlines()]
    figure(records, args.png)
    args.md.write_text(table(records) + "\n")
    print(f"{args.png}, {args.md}")


if __name__ == "__main__":
    main()
