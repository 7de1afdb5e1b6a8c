"""The use cases: the one floor that opens a repo, a transport, a backend, git, metrics or alerts.

``plan`` (:func:`build`), ``reconcile``, ``doctor``, ``node rejoin``, ``status`` and ``init`` live
here; each opens what it needs (:mod:`.context`), hands it to the cores below —
:mod:`haios.recovery` and :mod:`haios.detect` — and records what they decided.
"""

from .context import OpsContext, open_context
from .plan import build
from .reconcile import reconcile

__all__ = ["OpsContext", "build", "open_context", "reconcile"]
