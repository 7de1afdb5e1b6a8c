"""How haios reaches a node's root: the Transport protocol and its local implementation (SSH later)."""

from .base import Transport
from .local import LocalTransport

__all__ = ["LocalTransport", "Transport"]
