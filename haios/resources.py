"""Files haios ships: schemas, default policies and playbooks, example repos.

They live in the project's top-level folders and are packaged inside the wheel under
``haios/_data/``; the code always finds them through package resources, never through the path of
a checkout.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any


def data_dir(name: str) -> Traversable:
    """The shipped folder ``name`` (``schemas``, ``policies``, ``playbooks`` or ``examples``)."""
    return resources.files("haios") / "_data" / name


@cache
def schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``schemas/<name>.schema.json`` as a dict."""
    loaded: dict[str, Any] = json.loads((data_dir("schemas") / f"{name}.schema.json").read_text("utf-8"))
    return loaded
