"""The paired interval method on synthetic studies whose answer is known (fixed seeds, so the
counts are deterministic): coverage under no difference, coverage of a known shift, and the
power to see a shift of 4 between-seed standard deviations."""
import numpy as np
import pytest

from dice_core.reporting.intervals import Interval
from dice_core.reporting.paired import (
    HOLDS,
    REVERSED,
    UNRESOLVED,
    claim_verdict,
    difference,
    paired_bootstrap_interval,
    paper_claims,
    seed_interval,
)
from dice_core.reporting.sections import claims_section

STUDIES = 100
SEED_SD = 1.0     # between-seed standard deviation of one model's metric


def simulated_differences(shift, seeds, study):
    """Per-seed paired differences of two models trained with independent seeds: each
    model's metric varies by SEED_SD from seed to seed, the claimed one is ``shift`` better."""
    rng = np.random.default_rng([7, study, seeds])
    claimed = rng.normal(shift, SEED_SD, seeds)
    baseline = rng.normal(0.0, SEED_SD, seeds)
    return claimed - baseline


def count(condition, shift, seeds):
    return sum(condition(seed_interval(simulated_differences(shift, seeds, study)))
               for study in range(STUDIES))


def covers(value):
    return lambda interval: interval.low <= value <= interval.high


def test_models_from_one_distribution_give_intervals_that_cover_zero():
    assert count(covers(0.0), shift=0.0, seeds=3) >= 90


@pytest.mark.parametrize("seeds", [3, 5])
def test_a_known_shift_is_covered_88_to_99_times_in_100(seeds):
    assert 88 <= count(covers(2.5), shift=2.5, seeds=seeds) <= 99


def test_a_shift_of_four_between_seed_sds_excludes_zero_at_least_90_times_in_100():
    """With five seeds. Three seeds see it only about two times in three (65 of these 100
    studies: the t quantile with 2 degrees of freedom is 4.30); docs/evaluation.md says so."""
    assert count(lambda iv: iv.low > 0, shift=4 * SEED_SD, seeds=5) >= 90


def test_seed_interval_is_mean_plus_minus_t_sd_over_root_s():
    interval = seed_interval([1.0, 2.0, 3.0])          # mean 2, sd 1, t(0.975, 2) = 4.3027
    assert interval.value == pytest.approx(2.0)
    assert interval.high - 2.0 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)
    with pytest.raises(ValueError, match="at least two seeds"):
        seed_interval([1.0])


def test_paired_bootstrap_sees_a_difference_that_marginal_intervals_hide():
    """Two models scored on the same 500 samples whose per-sample scores share most of their
    variation: the marginal intervals overlap, the paired one excludes zero."""
    rng = np.random.default_rng(3)
    shared = rng.normal(0, 1, 500)
    claimed, baseline = shared + 0.1 + rng.normal(0, 0.1, 500), shared + rng.normal(0, 0.1, 500)
    draws = [rng.integers(0, 500, 500) for _ in range(400)]
    claimed_draws = [claimed[d].mean() for d in draws]
    baseline_draws = [baseline[d].mean() for d in draws]
    marginal_claimed = np.percentile(claimed_draws, [2.5, 97.5])
    marginal_baseline = np.percentile(baseline_draws, [2.5, 97.5])
    assert marginal_claimed[0] < marginal_baseline[1]              # they overlap
    paired = paired_bootstrap_interval(claimed.mean(), claimed_draws, baseline.mean(),
                                       baseline_draws)
    assert paired.low > 0
    assert paired.low <= 0.1 <= paired.high


def test_paired_bootstrap_of_one_distribution_covers_zero_in_most_studies():
    covered = 0
    for study in range(STUDIES):
        rng = np.random.default_rng([11, study])
        shared = rng.normal(0, 1, 200)
        claimed, baseline = shared + rng.normal(0, 0.3, 200), shared + rng.normal(0, 0.3, 200)
        draws = [rng.integers(0, 200, 200) for _ in range(200)]
        interval = paired_bootstrap_interval(claimed.mean(), [claimed[d].mean() for d in draws],
                                             baseline.mean(), [baseline[d].mean() for d in draws])
        covered += interval.low <= 0 <= interval.high
    assert covered >= 90


def test_difference_takes_seeds_when_there_are_several_and_the_bootstrap_for_one():
    several = difference([(3.0, 1.0), (4.0, 1.0), (5.0, 2.0)])
    assert several.per_seed == (2.0, 3.0, 3.0) and "3 training seeds" in several.method
    one = difference([(3.0, 1.0)], draws=([3.1, 2.9, 3.0], [1.0, 1.1, 0.9]))
    assert one.per_seed == (2.0,) and "sampling only" in one.method
    with pytest.raises(ValueError, match="bootstrap draws"):
        difference([(3.0, 1.0)])


@pytest.mark.parametrize("metric, low, high, expected", [
    ("fd", -3.0, -1.0, HOLDS), ("fd", 1.0, 3.0, REVERSED), ("fd", -1.0, 1.0, UNRESOLVED),
    ("is", 1.0, 3.0, HOLDS), ("is", -3.0, -1.0, REVERSED), ("recall", -0.1, 0.1, UNRESOLVED)])
def test_verdict_reads_the_sign_the_metric_calls_better(metric, low, high, expected):
    assert claim_verdict(Interval((low + high) / 2, low, high), metric) == expected


def test_the_claims_a_model_list_can_test():
    claims = paper_claims(["dit-t", "dice-t-onehand", "dice-t", "dimr-t", "dice-t-residual"])
    assert [(c.text, c.claimed, c.baseline) for c in claims] == [
        ("DICE beats DiT", "dice-t", "dit-t"), ("DICE beats DiMR", "dice-t", "dimr-t"),
        ("two hands beat one", "dice-t", "dice-t-onehand"),
        ("the denoising cascade beats the residual one", "dice-t", "dice-t-residual")]
    assert paper_claims(["dit-t", "dimr-t"]) == []
    assert [c.text for c in paper_claims(["dice-t", "dimr-t"])] == ["DICE beats DiMR"]


def test_the_claims_section_gives_difference_seeds_interval_verdict_and_chance():
    claims = paper_claims(["dice-t", "dit-t"])
    differences = {("DICE beats DiT", "fd"): difference([(100.0, 110.0), (104.0, 111.0)]),
                   ("DICE beats DiT", "recall"): difference([(0.1, 0.1), (0.2, 0.1)])}
    text = claims_section(claims, differences, {"fd": "FD", "recall": "recall"}, [42, 1])
    assert text.startswith("Training seeds: 42, 1 (2)")
    fd_row, recall_row = text.splitlines()[4:6]
    interval = seed_interval([-10.0, -7.0])
    assert fd_row == (f"| DICE beats DiT | dice-t - dit-t | FD | -8.50 | -10.00, -7.00 | "
                      f"[{interval.low:+.2f}, {interval.high:+.2f}] | "
                      f"{claim_verdict(interval, 'fd')} |")
    assert recall_row.endswith("| +0.050 | +0.000, +0.100 | [-0.585, +0.685] | "
                               "cannot be told apart |")
    assert "t interval over 2 training seeds" in text
    assert "2 comparisons at 95% give about 0.1 verdicts" in text


def test_the_report_pairs_runs_by_training_seed_and_uses_the_bootstrap_only_for_one():
    from pipelines.report import paired_differences
    claims = paper_claims(["dice-t", "dit-t"])
    points = {"dice-t": {"fd": 100.0}, "dit-t": {"fd": 110.0},
              "dice-t-s1": {"fd": 104.0}, "dit-t-s1": {"fd": 111.0},
              "dice-t-s2": {"fd": 90.0}}                  # dit-t-s2 was not evaluated
    found = paired_differences(claims, [42, 1, 2], points, draws={})
    fd = found["DICE beats DiT", "fd"]
    assert fd.per_seed == (-10.0, -7.0) and fd.interval == seed_interval([-10.0, -7.0])
    assert fd.method == "t interval over 2 training seeds"

    draws = {"dice-t": {"fd": [99.0, 101.0, 100.5]}, "dit-t": {"fd": [111.0, 109.0, 110.0]}}
    one = paired_differences(claims, [42], points, draws)["DICE beats DiT", "fd"]
    assert one.per_seed == (-10.0,) and one.method.startswith("paired bootstrap")
    assert one.interval == paired_bootstrap_interval(100.0, draws["dice-t"]["fd"], 110.0,
                                                     draws["dit-t"]["fd"])
    assert paired_differences(claims, [2], points, draws) == {}
