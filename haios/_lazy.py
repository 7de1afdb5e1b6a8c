"""Names a package exports but imports on first use (PEP 562): importing the package stays cheap,
and a program pays only for the parts it touches (``haios --version``, a node's sub-step)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def exports(package: str, where: dict[str, str]) -> Callable[[str], object]:
    """The package's module ``__getattr__``: ``where`` maps each name to its module (absolute, or
    relative to ``package``); once imported, a name is an ordinary attribute of the package."""

    def __getattr__(name: str) -> object:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
