"""The Φ-accrual estimator (SPEC §3), exactly as specified."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haios.detect.phi import Z95, Estimator, Estimators, durations_from_records, phi_of


def cdf(phi: float) -> float:
    return 1.0 - 10.0 ** (-phi)


@pytest.mark.parametrize(
    ("x", "expected", "tolerance"),
    [
        (0, 0.5, 0.001),
        (6, 0.7257, 0.001),
        (15, 0.9332, 0.001),
        (20, 0.97725, 0.001),
        (25, 0.99379, 0.001),
        (35, 0.99977, 0.001),
        (40, 0.99997, 0.0001),
    ],
)
def test_phi_normal_cdf_vectors(x: float, expected: float, tolerance: float) -> None:
    # the normal-CDF points Akka's detector is tested with (mean 0, standard deviation 10)
    assert abs(cdf(phi_of(x, 0.0, 10.0)) - expected) < tolerance


def test_phi_is_exact_not_logistic() -> None:
    # exact value: -log10(0.5 * erfc(3 / sqrt(2))) at 3 standard deviations
    assert phi_of(30, 0, 10) == pytest.approx(-math.log10(0.5 * math.erfc(3 / math.sqrt(2))), rel=1e-12)


@given(
    st.floats(min_value=-1e6, max_value=1e300),
    st.floats(min_value=0, max_value=1e6),
    st.floats(min_value=1e-3, max_value=1e6),
)
def test_property_phi_finite_nonnegative(elapsed: float, mean: float, sigma: float) -> None:
    value = phi_of(elapsed, mean, sigma)
    assert math.isfinite(value) and value >= 0


@given(st.floats(min_value=0, max_value=1e7), st.floats(min_value=0, max_value=1e7))
def test_property_phi_monotone_in_elapsed(a: float, b: float) -> None:
    lo, hi = sorted((a, b))
    p_lo, p_hi = phi_of(lo, 30.0, 15.0), phi_of(hi, 30.0, 15.0)
    assert p_hi >= p_lo - 1e-9 * max(1.0, p_lo)


def test_phi_far_tail_is_continuous_at_the_switch() -> None:
    sigma = 1.0
    below = phi_of(26.0 * math.sqrt(2) - 1e-9, 0.0, sigma)
    above = phi_of(26.0 * math.sqrt(2) + 1e-9, 0.0, sigma)
    assert above == pytest.approx(below, rel=1e-9)


def test_estimator_no_samples_timeout_is_k_times_prior_p95() -> None:
    est = Estimator("ANALYZE", 15.0, k=1.6)
    assert est.timeout() == 1.6 * (15.0 + Z95 * 7.5)


def test_estimator_blend_at_five_samples() -> None:
    est = Estimator("ANALYZE", 15.0, k=1.6)
    for _ in range(5):
        est.add(30.0)  # 2 x prior, each under the cap
    w = 0.5
    mean = (1 - w) * 15.0 + w * 30.0
    sigma = math.sqrt((1 - w) * 7.5**2 + w * 0.0)
    assert est.distribution() == pytest.approx((mean, sigma))
    assert est.timeout() == pytest.approx(1.6 * (mean + Z95 * sigma))


def test_estimator_window_alone_from_ten_samples() -> None:
    est = Estimator("IDLE", 10.0)
    values = [4.0, 5.0, 6.0, 5.0, 4.0, 6.0, 5.0, 5.0, 4.0, 6.0]
    for v in values:
        est.add(v)
    m = sum(values) / 10
    s = math.sqrt(sum((v - m) ** 2 for v in values) / 10)
    assert est.distribution() == pytest.approx((m, s))


def test_estimator_window_forgets() -> None:
    est = Estimator("VALIDATE", 30.0)
    for _ in range(100):
        est.add(30.0)
    for _ in range(100):
        est.add(60.0)  # under the cap: 3 x P95 of ~30 s
    assert est.n == 100 and set(est.samples) == {60.0}


def test_estimator_identical_samples_no_division_by_zero() -> None:
    est = Estimator("IDLE", 10.0)
    for _ in range(20):
        est.add(2.0)
    mean, sigma = est.distribution()
    assert mean == 2.0 and sigma == pytest.approx(0.02)
    assert math.isfinite(est.phi(2.5)) and est.phi(1.0) == pytest.approx(0.0, abs=1e-12)


def test_estimator_outlier_capped_timeout_bounded() -> None:
    est = Estimator("BLUEPRINT", 20.0)
    for _ in range(20):
        est.add(20.0)
    before = est.timeout()
    cap = 3.0 * est.p95()
    est.add(10 * 20.0)  # a 10x outlier
    assert max(est.samples) == pytest.approx(cap)
    assert est.timeout() < 2.0 * before


def test_estimator_aborted_runs_not_recorded() -> None:
    est = Estimator("CONSTRUCT", 120.0)
    est.add(5.0, aborted=True)
    assert est.n == 0


def test_estimators_phases_isolated_and_modes() -> None:
    ests = Estimators(k=1.2)
    for _ in range(10):
        ests["ANALYZE"].add(1.0)
    assert ests["BLUEPRINT"].n == 0
    assert ests["BLUEPRINT"].timeout() == pytest.approx(1.2 * (20.0 + Z95 * 10.0))
    assert ests["ANALYZE"].timeout() < 2.0


@pytest.mark.parametrize("k", [1.0, 1.2, 1.6])
def test_estimator_false_alarm_rate_matches_expectation(k: float) -> None:
    rng = random.Random(17)
    mu, sigma = 40.0, 8.0
    est = Estimator("VALIDATE", 30.0, k=k)
    for _ in range(100):
        est.add(rng.gauss(mu, sigma))
    threshold = est.timeout()
    trials = 20_000
    alarms = sum(1 for _ in range(trials) if rng.gauss(mu, sigma) > threshold)
    expected = 0.5 * math.erfc((threshold - mu) / (sigma * math.sqrt(2)))
    bound = 4 * math.sqrt(expected * (1 - expected) / trials) + 1e-4
    assert abs(alarms / trials - expected) < bound
    if k == 1.0:
        assert 0.02 < alarms / trials < 0.09  # about 5 %, give or take the fitted window


def test_durations_from_records_skip_aborts(tmp_path: object) -> None:
    from pathlib import Path

    from haios.node import Node, init_node_root
    from haios.wal import read_records

    root = Path(str(tmp_path)) / "n1"
    init_node_root(root, "n1", {"cluster": "c", "max_g": None})
    clock = iter([100.0, 100.0, 100.0, 105.0, 105.0, 200.0, 200.0, 200.0, 203.0] + [300.0] * 50)
    node = Node(root, clock=lambda: next(clock))
    with node.begin(1, "ANALYZE", participants=["n1"]) as tx:
        tx.prepare()
        tx.abort("no")
    with node.begin(1, "ANALYZE", participants=["n1"]) as tx:
        tx.prepare()
        tx.commit()
    durations = durations_from_records(read_records(root / "wal"))
    assert list(durations) == ["ANALYZE"] and len(durations["ANALYZE"]) == 1


@settings(max_examples=200)
@given(
    durations=st.lists(
        st.one_of(
            st.floats(min_value=0.0, max_value=200.0),
            st.floats(min_value=200.0, max_value=1e6),  # outliers, capped
            st.just(0.0),
        ),
        max_size=250,
    ),
    prior=st.floats(min_value=0.001, max_value=500.0),
)
def test_property_adding_keeps_exactly_the_capped_samples(durations: list[float], prior: float) -> None:
    quick = Estimator("CONSTRUCT", prior, window=100)
    reference = Estimator("CONSTRUCT", prior, window=100)
    for d in durations:
        quick.add(d)
        reference.samples.append(min(d, reference.outlier_cap * reference.p95()))  # the rule, as written
    assert list(quick.samples) == list(reference.samples)
    assert quick.distribution() == reference.distribution()


@settings(max_examples=300)
@given(
    durations=st.lists(
        st.one_of(
            st.floats(min_value=0.0, max_value=1e-3),
            st.floats(min_value=0.0, max_value=1e3),
            st.floats(min_value=1e6, max_value=1e12),  # huge ones leave the window: the running sum cancels
            st.sampled_from([0.0, -1.0, float("inf"), float("nan")]),  # skipped
            st.lists(st.floats(min_value=0.9, max_value=1.1), min_size=12, max_size=12),  # a settled window ...
            st.floats(min_value=3.0, max_value=5.0),  # ... and runs about 3x its mean: the cap decides
        ),
        max_size=400,
    ),
    prior=st.floats(min_value=1e-6, max_value=1e6),
    window=st.integers(min_value=1, max_value=12),
)
def test_property_the_running_sum_never_accepts_what_the_exact_mean_caps(
    durations: list[float | list[float]], prior: float, window: int
) -> None:
    flat = [x for d in durations for x in (d if isinstance(d, list) else [d])]
    quick = Estimator("VALIDATE", prior, window=window, blend_samples=min(window, 10))
    reference = Estimator("VALIDATE", prior, window=window, blend_samples=min(window, 10))
    quick.add_all(flat)
    for d in flat:
        if math.isfinite(d) and d >= 0:
            reference.samples.append(min(d, reference.outlier_cap * reference.p95()))
    assert list(quick.samples) == list(reference.samples)
