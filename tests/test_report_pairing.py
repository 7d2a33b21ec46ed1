"""``bninit report`` pairs the arms by seed, whatever order the results file holds them in: ``bninit compare
--parallel`` appends each (seed, arm) line when it finishes, so the arms' lines come in any order."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from lightning_bninit.experiments.multiarm import multi_arm_report
from lightning_bninit.experiments.report import paired_report
from lightning_bninit.experiments.results import load_results

# Per seed 1..8: the treatment is better by 0.01..0.03 on every seed, while the seeds themselves differ by far more,
# so pairing by anything but the seed loses the effect.
BASE = [0.80, 0.85, 0.90, 0.83, 0.88, 0.81, 0.86, 0.92]
GAIN = [0.02, 0.01, 0.03, 0.02, 0.01, 0.02, 0.03, 0.01]
TREAT = [b + g for b, g in zip(BASE, GAIN)]
SEEDS = list(range(1, len(BASE) + 1))


def write(path: Path, arms: dict[str, list[float]], order: dict[str, list[int]]) -> Path:
    """One line per (seed, arm); arm by arm, each arm's seeds in the given order (as a parallel compare may)."""
    lines = []
    for arm, values in arms.items():
        for seed in order[arm]:
            lines.append({"seed": seed, "arm": arm, "test_acc": values[seed - 1], "duration_s": 1.0, "config": {}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_two_arm_report_pairs_by_seed_with_one_arm_written_in_reverse(tmp_path: Path) -> None:
    reverse = write(tmp_path / "r.jsonl", {"standard": BASE, "bninit": TREAT},
                    {"standard": SEEDS, "bninit": SEEDS[::-1]})
    report = paired_report(load_results(reverse), "test_acc")
    expected = stats.ttest_rel(TREAT, BASE, alternative="greater").pvalue
    assert expected < 0.01  # what pairing by seed gives
    assert report.seeds == SEEDS
    assert report.baseline_values == BASE and report.treatment_values == TREAT
    assert report.differences == [t - b for t, b in zip(TREAT, BASE)]
    assert report.p_value_ttest == expected  # the same scipy call on the same arrays
    assert report.significant


def test_multi_arm_report_pairs_by_seed_with_arms_in_shuffled_order(tmp_path: Path) -> None:
    order = list(np.random.default_rng(0).permutation(SEEDS).tolist())
    other = [b + 0.5 * g for b, g in zip(BASE, GAIN)]
    path = write(tmp_path / "r.jsonl", {"standard": BASE, "bninit": TREAT, "c10": other},
                 {"standard": SEEDS[::-1], "bninit": order, "c10": SEEDS})
    report = multi_arm_report(load_results(path), "test_acc")
    by_arm = {c.treatment: c for c in report.comparisons}
    for arm, values in (("bninit", TREAT), ("c10", other)):
        assert by_arm[arm].seeds == SEEDS
        assert by_arm[arm].differences == [t - b for t, b in zip(values, BASE)]
        assert by_arm[arm].p_value_ttest == stats.ttest_rel(values, BASE, alternative="greater").pvalue
