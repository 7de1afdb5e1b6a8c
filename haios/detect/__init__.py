"""Detection (SPEC §3): the adaptive Φ-accrual estimator and the detectors, pure functions of (observations, now)."""

from .phi import Estimator, Estimators, durations_from_records, phi_of

__all__ = ["Estimator", "Estimators", "durations_from_records", "phi_of"]
