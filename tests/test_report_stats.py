"""The report's statistics against independent references: the t interval, Holm's method,
power, verdicts on data where the t-test and Wilcoxon disagree, and diverged runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower

from lightning_bninit.experiments.command import main
from lightning_bninit.experiments.report import format_markdown, paired_report
from lightning_bninit.experiments.results import load_results
from lightning_bninit.experiments.stats import holm_adjust, paired_t_power, pairs_for_power, t_interval

SM_ALTERNATIVE = {"greater": "larger", "less": "smaller", "two-sided": "two-sided"}


def write_pairs(path: Path, base, treat, metric: str = "test_acc") -> Path:
    lines = []
    for seed, (b, t) in enumerate(zip(base, treat), start=1):
        lines.append({"seed": seed, "arm": "standard", metric: b, "config": {}})
        lines.append({"seed": seed, "arm": "bninit", metric: t, "config": {}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def report_of(tmp_path: Path, diffs, **kwargs):
    diffs = list(diffs)
    return paired_report(load_results(write_pairs(tmp_path / "r.jsonl", [0.0] * len(diffs), diffs)), "test_acc",
                         n_resamples=200, **kwargs)


# --- item 5: the t interval -------------------------------------------------------------------------------------

def test_t_interval_by_hand() -> None:
    # differences 1, 2, 3: mean 2, std 1, n 3; t table: t(0.95, 2) = 2.919986, t(0.975, 2) = 4.302653
    half_one, half_two = 2.919986 / math.sqrt(3), 4.302653 / math.sqrt(3)
    assert t_interval(2.0, 1.0, 3, 0.05, "greater") == (pytest.approx(2 - half_one, abs=1e-6), math.inf)
    assert t_interval(2.0, 1.0, 3, 0.05, "less") == (-math.inf, pytest.approx(2 + half_one, abs=1e-6))
    low, high = t_interval(2.0, 1.0, 3, 0.05, "two-sided")
    assert (low, high) == (pytest.approx(2 - half_two, abs=1e-6), pytest.approx(2 + half_two, abs=1e-6))
    with pytest.raises(ValueError, match="alternative"):
        t_interval(2.0, 1.0, 3, 0.05, "bigger")


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_t_interval_agrees_with_the_t_test_on_random_data(alternative: str) -> None:
    rng = np.random.default_rng(1)
    disagreements, significant = [], 0
    for _ in range(600):
        n = int(rng.integers(2, 16))
        alpha = float(rng.choice([0.01, 0.05, 0.1, 0.2]))
        diffs = rng.normal(rng.normal(0, 0.7), 1.0, n)
        p = stats.ttest_1samp(diffs, 0.0, alternative=alternative).pvalue
        low, high = t_interval(float(diffs.mean()), float(diffs.std(ddof=1)), n, alpha, alternative)
        excludes_zero = not low <= 0 <= high
        significant += p <= alpha
        if excludes_zero != (p <= alpha):
            disagreements.append((n, alpha, diffs.tolist(), p, low, high))
    assert not disagreements
    assert 60 < significant < 540  # both verdicts occur, so the check means something


def test_report_interval_matches_its_verdict(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    for i in range(12):
        alternative = ("greater", "less", "two-sided")[i % 3]
        rep = report_of(tmp_path, rng.normal(0.4 * (i % 4 - 1), 1.0, 3 + i % 5), alternative=alternative)
        assert rep.significant == (not rep.ci_low <= 0 <= rep.ci_high) == (rep.p_value_ttest <= rep.alpha)
        assert math.isinf(rep.ci_high) == (alternative == "greater")
        assert math.isinf(rep.ci_low) == (alternative == "less")


def test_bootstrap_interval_is_only_the_robustness_check(tmp_path: Path) -> None:
    # three pairs: the bootstrap interval is far narrower than the t interval and excludes 0 where the test
    # (and the main interval) do not: the verdict and the main interval follow the test
    rep = report_of(tmp_path, [0.01, 0.05, 0.02], alternative="two-sided")
    assert rep.ci_high - rep.ci_low > 2 * (rep.bootstrap_ci95_high - rep.bootstrap_ci95_low)
    assert rep.bootstrap_ci95_low > 0 and rep.ci_low < 0 < rep.ci_high
    assert rep.p_value_ttest > 0.05 and not rep.significant
    md = format_markdown(rep)
    assert f"95% two-sided paired t CI of mean difference (the test's interval) | [{rep.ci_low:.4f}" in md
    assert "| robustness check: bootstrap 95% CI" in md


# --- Holm -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("p", "expected"), [
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),  # 4*0.005, 3*0.01, max(2*0.03, ...), max(0.04, 0.06)
    ([0.5, 0.6], [1.0, 1.0]),  # 2*0.5 capped at 1; 0.6 raised to the running max
    ([0.02, 0.02, 0.5], [0.06, 0.06, 0.5]),  # ties
    ([0.03], [0.03]),  # a family of one: unchanged
    ([0.02, 0.03], [0.04, 0.04]),  # Bonferroni would give 0.06 for the second
    ([], []),
])
def test_holm_by_hand(p: list[float], expected: list[float]) -> None:
    assert holm_adjust(p) == pytest.approx(expected)


def test_holm_against_statsmodels() -> None:
    rng = np.random.default_rng(3)
    for _ in range(30):  # statsmodels' multipletests takes ~0.1 s a call here
        m = int(rng.integers(1, 16))
        p = rng.uniform(0, 1, m) ** rng.choice([1, 3, 8])  # many small p-values, some ties after rounding
        p = np.round(p, int(rng.choice([2, 6])))
        reject, adjusted, _, _ = multipletests(p, alpha=0.05, method="holm")
        ours = holm_adjust(p.tolist())
        assert ours == pytest.approx(adjusted.tolist(), abs=1e-12)
        assert [q <= 0.05 for q in ours] == reject.tolist()


@pytest.mark.parametrize("bad", [[0.1, -0.01], [1.5], [float("nan")]])
def test_holm_rejects_values_that_are_not_p_values(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="p-values must be numbers in"):
        holm_adjust(bad)


# --- item 9: power ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_power_observed_matches_statsmodels(tmp_path: Path, alternative: str) -> None:
    for diffs in ([0.3, 0.5, -0.1, 0.4, 0.2, 0.6, 0.1], [-0.2, -0.5, 0.1, -0.3, -0.4]):
        rep = report_of(tmp_path, diffs, alternative=alternative)
        expected = TTestPower().power(effect_size=rep.cohens_dz, nobs=rep.n_pairs, alpha=0.05,
                                      alternative=SM_ALTERNATIVE[alternative])
        assert rep.power_observed == pytest.approx(expected, abs=1e-6)


def test_power_observed_by_monte_carlo() -> None:
    # the power is the chance that the test rejects: simulate the test at a known effect
    rng = np.random.default_rng(11)
    n, dz, sims = 8, 0.7, 20_000
    samples = rng.normal(dz, 1.0, size=(sims, n))
    for alternative, shift in (("greater", 1.0), ("less", -1.0), ("two-sided", 1.0)):
        p = stats.ttest_1samp(shift * samples, 0.0, axis=1, alternative=alternative).pvalue
        rate = float(np.mean(p <= 0.05))
        se = math.sqrt(rate * (1 - rate) / sims)
        assert paired_t_power(shift * dz, n, 0.05, alternative) == pytest.approx(rate, abs=4 * se)


@pytest.mark.parametrize("dz", [0.3, 0.5, 0.8, 1.3, 2.0])
def test_pairs_for_power_matches_statsmodels(dz: float) -> None:
    n = TTestPower().solve_power(effect_size=dz, alpha=0.05, power=0.8, alternative="larger")
    assert pairs_for_power(dz) == max(2, math.ceil(n))
    n2 = TTestPower().solve_power(effect_size=dz, alpha=0.05, power=0.8, alternative="two-sided")
    assert pairs_for_power(dz, alternative="two-sided") == max(2, math.ceil(n2))


# --- item 9: verdicts on data where the t-test and Wilcoxon disagree ---------------------------------------------

def test_verdict_follows_the_t_test_when_wilcoxon_is_not_significant(tmp_path: Path) -> None:
    # four large gains and one tiny loss: t-test p = 0.011, exact Wilcoxon p = 2/32 = 0.0625
    rep = report_of(tmp_path, [5.0, 6.0, 7.0, 8.0, -0.1])
    assert rep.p_value_ttest < 0.05 < rep.p_value_wilcoxon
    assert rep.significant is True
    assert rep.verdict.startswith("SIGNIFICANT: bninit > standard on test_acc (one-sided paired t-test, p = 0.0107")


def test_verdict_follows_the_t_test_when_wilcoxon_is_significant(tmp_path: Path) -> None:
    # all gains, one of them huge: exact Wilcoxon p = 1/32 = 0.031, t-test p = 0.18 (the outlier inflates the std)
    rep = report_of(tmp_path, [0.01, 0.02, 0.03, 0.04, 10.0])
    assert rep.p_value_wilcoxon < 0.05 < rep.p_value_ttest
    assert rep.significant is False
    assert rep.verdict.startswith("NOT SIGNIFICANT: no evidence that bninit > standard on test_acc "
                                  "(one-sided paired t-test, p = 0.1843 > alpha = 0.05, 5 pairs)")
    assert "**Verdict (alpha = 0.05):** NOT SIGNIFICANT" in format_markdown(rep)


# --- item 8: diverged runs --------------------------------------------------------------------------------------

DIVERGED_FILE = (
    '{"seed": 1, "arm": "standard", "test_acc": 0.80}\n{"seed": 1, "arm": "bninit", "test_acc": 0.83}\n'
    '{"seed": 2, "arm": "standard", "test_acc": 0.82}\n{"seed": 2, "arm": "bninit", "test_acc": NaN}\n'
    '{"seed": 3, "arm": "standard", "test_acc": 0.79}\n{"seed": 3, "arm": "bninit", "test_acc": 0.81}\n'
    '{"seed": 4, "arm": "standard", "test_acc": -Infinity}\n{"seed": 4, "arm": "bninit", "test_acc": 0.80}\n'
    '{"seed": 5, "arm": "standard", "test_acc": 0.81}\n{"seed": 5, "arm": "bninit", "test_acc": 0.85}\n'
    '{"seed": 6, "arm": "bninit", "test_acc": Infinity}\n'
)


def test_diverged_runs_are_counted_and_their_pairs_dropped(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(DIVERGED_FILE)  # NaN / Infinity as the recorder writes them (Python's json reads them)
    results = load_results(path)
    assert math.isnan(results.runs[3].metrics["test_acc"]) and results.runs[6].metrics["test_acc"] == -math.inf
    rep = paired_report(results, "test_acc", n_resamples=200)
    # seed 2: the treatment diverged; seed 4: the baseline diverged; seed 6: diverged and unpaired
    assert rep.seeds == [1, 3, 5] and rep.n_pairs == 3 and rep.n_pairs_dropped_diverged == 2
    assert rep.diverged_runs == {"standard": [4], "bninit": [2, 6]}
    assert rep.unpaired == {"standard": [], "bninit": [6]}
    base, treat = np.array([0.80, 0.79, 0.81]), np.array([0.83, 0.81, 0.85])
    assert rep.mean_diff == pytest.approx((treat - base).mean())
    assert rep.p_value_ttest == pytest.approx(stats.ttest_rel(treat, base, alternative="greater").pvalue)
    finite = np.array([0.83, 0.81, 0.80, 0.85])  # every finite run of the arm, paired or not
    assert rep.arms["bninit"] == {"n": 4, "mean": pytest.approx(finite.mean()),
                                  "std": pytest.approx(finite.std(ddof=1)), "diverged": 2}
    assert rep.verdict.endswith("3 pairs); 2 pair(s) dropped for diverged runs (standard 1, bninit 2)")
    assert any("2 pair(s) of 'standard' and 'bninit' with a diverged run dropped (seeds [2, 4])" in n
               for n in rep.notes)
    assert "| bninit | 4 | 0.8225 | 0.0222 | 2 |" in format_markdown(rep)
    assert "| pairs | 3 (2 more dropped: diverged runs) |" in format_markdown(rep)


def test_diverged_runs_in_the_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(DIVERGED_FILE)
    assert main(["report", str(path), "--metric", "test_acc", "--json", "--resamples", "200"]) == 0
    out = capsys.readouterr().out
    obj = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in the JSON output"))  # strict JSON
    assert obj["n_diverged_runs"] == {"standard": 1, "bninit": 2}
    assert obj["diverged_runs"] == {"standard": [4], "bninit": [2, 6]}
    assert obj["n_pairs_dropped_diverged"] == 2 and obj["n_pairs"] == 3
    assert obj["arms"]["bninit"]["diverged"] == 2
