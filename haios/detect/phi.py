"""The adaptive Φ-accrual phase timeout (SPEC §3).

One estimator per phase type keeps the last ``window`` (100) completed durations; aborted runs are
not recorded, and a sample is capped at ``outlier_cap`` (3) × the current P95 so one outlier cannot
poison the window. It starts from a prior per phase — a normal distribution with mean
ANALYZE 15 s, BLUEPRINT 20 s, CONSTRUCT 120 s, VALIDATE 30 s, IDLE 10 s and standard deviation
0.5 × mean — and blends it with the samples by weight ``w = min(n, 10) / 10``: the blended normal
has mean ``(1 − w)·μ₀ + w·m`` and variance ``(1 − w)·σ₀² + w·s²`` (``m``, ``s``: the window's mean and
population standard deviation). From 10 samples on, the window alone drives it.

``P95 = mean + 1.6449·sd`` of the blended normal, the **timeout is k × P95** (k in [1.2, 2.0]), and
``φ(t) = −log10 P(duration > t)`` is computed exactly with ``math.erfc``, switching to the
asymptotic expansion of log erfc far in the tail so that φ stays finite and never NaN.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config.model import PRIOR_MEANS
from ..wal import RecordType

Z95 = 1.6448536269514722  # the standard normal's 95th percentile
MIN_SIGMA_RATIO = 0.01  # identical samples: the spread never falls below 1 % of the mean ...
MIN_SIGMA = 0.001  # ... nor below a millisecond
_TAIL_Z = 26.0  # beyond this, 0.5·erfc(z) is below 1e-300: use the expansion of log erfc
_MAX_Z = 1e150  # z² stays finite


def phi_of(elapsed: float, mean: float, sigma: float) -> float:
    """−log10 P(X > elapsed) for X ~ N(mean, sigma): 0 when the phase is young, growing without bound."""
    z = (elapsed - mean) / (sigma * math.sqrt(2.0))
    if z < _TAIL_Z:
        q = 0.5 * math.erfc(z)
        return max(0.0, -math.log10(q)) if q > 0 else math.inf  # q > 0 always holds for z < 26
    z = min(z, _MAX_Z)
    z2 = z * z
    # log erfc(z) = −z² − log(z·√π) + log(1 − 1/(2z²) + 3/(4z⁴) − 15/(8z⁶) + …)
    series = 1.0 - 1.0 / (2 * z2) + 3.0 / (4 * z2 * z2) - 15.0 / (8 * z2 * z2 * z2)
    ln_q = math.log(0.5) - z2 - math.log(z * math.sqrt(math.pi)) + math.log(series)
    return -ln_q / math.log(10.0)


_EPS = 2.0**-52  # the relative spacing of doubles: each rounding is off by at most half of it


@dataclass
class Estimator:
    """The duration estimator of one phase type."""

    phase: str
    prior_mean: float
    k: float = 1.6
    window: int = 100
    outlier_cap: float = 3.0
    blend_samples: int = 10
    prior_sigma_ratio: float = 0.5
    samples: deque[float] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.samples = deque(self.samples, maxlen=self.window)

    @property
    def n(self) -> int:
        return len(self.samples)

    def add(self, duration: float, *, aborted: bool = False) -> None:
        """Record a completed run (aborted runs are not recorded); capped at outlier_cap × P95."""
        if not aborted:
            self.add_all((duration,))

    def add_all(self, durations: Iterable[float]) -> None:
        """:meth:`add` each completed run in turn (a pass feeds every node's durations: 100,000 at 200
        nodes; one loop here, not a call per duration)."""
        samples, blend, prior, cap, window = (
            self.samples,
            self.blend_samples,
            self.prior_mean,
            self.outlier_cap,
            self.window,
        )
        # The spread is at least its floors, so P95 is at least the mean plus Z95 × the larger floor:
        # a duration under the cap of that bound is under the cap, and the window's variance (a pass
        # over it per sample) is computed only for the rest. That bound grows with the mean, so a
        # mean no larger than the exact one (_mean(), an fsum of the window) can only accept less:
        # the bound is first tried with a running sum less its largest rounding error (each of the
        # ``ops`` additions since the last exact sum is off by at most EPS/2 of the largest sum it
        # made, ``peak``), and the window is summed exactly only when that does not accept.
        total = math.fsum(samples)
        ops, peak = 0, abs(total)
        for duration in durations:
            if not math.isfinite(duration) or duration < 0:
                continue
            n = len(samples)
            w = min(n, blend) / blend
            low = max(0.0, (total - 2 * (ops + 1) * _EPS * peak) / n) if n else 0.0
            low = (1 - w) * prior + w * low
            if duration > cap * (low + Z95 * max(MIN_SIGMA_RATIO * abs(low), MIN_SIGMA)):
                mean = (1 - w) * prior + w * (math.fsum(samples) / n if n else 0.0)  # _mean(), the same bits
                if duration > cap * (mean + Z95 * max(MIN_SIGMA_RATIO * abs(mean), MIN_SIGMA)):
                    duration = min(duration, cap * self.p95())
            if n == window:
                total -= samples[0]  # the deque drops it on append
            samples.append(duration)
            total += duration
            ops += 2
            peak = max(peak, abs(total))
            if ops >= 2 * window:
                total = math.fsum(samples)
                ops, peak = 0, abs(total)

    def weight(self) -> float:
        return min(self.n, self.blend_samples) / self.blend_samples

    def _mean(self) -> float:
        """The blended normal's mean (what :meth:`distribution` computes, to the bit)."""
        w = self.weight()
        m = math.fsum(self.samples) / self.n if self.n else 0.0
        return (1 - w) * self.prior_mean + w * m

    def distribution(self) -> tuple[float, float]:
        """(mean, standard deviation) of the blended normal."""
        w = self.weight()
        prior_sigma = self.prior_sigma_ratio * self.prior_mean
        if self.n:
            m = math.fsum(self.samples) / self.n
            var_s = math.fsum((x - m) ** 2 for x in self.samples) / self.n
        else:
            m = var_s = 0.0
        mean = self._mean()
        sigma = math.sqrt((1 - w) * prior_sigma**2 + w * var_s)
        return mean, max(sigma, MIN_SIGMA_RATIO * abs(mean), MIN_SIGMA)

    def p95(self) -> float:
        mean, sigma = self.distribution()
        return mean + Z95 * sigma

    def timeout(self) -> float:
        return self.k * self.p95()

    def phi(self, elapsed: float) -> float:
        mean, sigma = self.distribution()
        return phi_of(elapsed, mean, sigma)

    def describe(self, elapsed: float) -> dict[str, Any]:
        """What a finding shows as evidence: the numbers behind the verdict."""
        mean, sigma = self.distribution()
        return {
            "elapsed_s": round(elapsed, 3),
            "timeout_s": round(self.timeout(), 3),
            "phi": round(self.phi(elapsed), 3),
            "p95_s": round(self.p95(), 3),
            "k": self.k,
            "samples": self.n,
            "mean_s": round(mean, 3),
            "sigma_s": round(sigma, 3),
        }


class Estimators:
    """One estimator per phase type, configured from the thresholds."""

    def __init__(
        self,
        *,
        k: float = 1.6,
        priors: Mapping[str, float] | None = None,
        window: int = 100,
        outlier_cap: float = 3.0,
        blend_samples: int = 10,
        prior_sigma_ratio: float = 0.5,
    ) -> None:
        means = {**PRIOR_MEANS, **(priors or {})}
        self.by_phase = {
            phase: Estimator(phase, mean, k, window, outlier_cap, blend_samples, prior_sigma_ratio)
            for phase, mean in means.items()
        }

    @classmethod
    def from_thresholds(cls, thresholds: Any) -> Estimators:
        phi = thresholds.phi
        return cls(
            k=phi.k,
            priors=phi.priors,
            window=phi.window,
            outlier_cap=phi.outlier_cap,
            blend_samples=phi.blend_samples,
            prior_sigma_ratio=phi.prior_sigma_ratio,
        )

    def __getitem__(self, phase: str) -> Estimator:
        return self.by_phase[phase]

    def feed(self, durations: Mapping[str, Iterable[float]]) -> None:
        """Add the completed durations of each phase type; a phase that is none of the five (a WAL or a
        node's summary can name any) has no estimator and is not counted."""
        for phase, values in durations.items():
            estimator = self.by_phase.get(phase)
            if estimator is not None:
                estimator.add_all(values)


def durations_from_records(records: Iterable[Any]) -> dict[str, list[float]]:
    """Completed durations per phase, BEGIN_PHASE → COMMIT_PHASE, from a node's WAL records in order.

    Aborted attempts are not durations of the phase and are skipped.
    """
    began: dict[tuple[int, str], float] = {}
    out: dict[str, list[float]] = {}
    for record in records:
        p = record.payload
        key = (p.get("g"), p.get("phase"))
        if record.type is RecordType.BEGIN_PHASE:
            began[key] = p["ts"]
        elif record.type is RecordType.COMMIT_PHASE and key in began:
            out.setdefault(key[1], []).append(p["ts"] - began.pop(key))
        elif record.type is RecordType.ABORT_PHASE:
            began.pop(key, None)
    return out
