"""The desired-state repo: load (ruamel.yaml) → validate (jsonschema) → frozen dataclasses.

The names below are imported when first used: a node's sub-step needs the model's phases, not the
validator."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import exports

if TYPE_CHECKING:
    from ..errors import Problem
    from .model import RepoConfig, parse_duration
    from .validate import ValidationReport, load_repo, validate_repo

__all__ = ["Problem", "RepoConfig", "ValidationReport", "load_repo", "parse_duration", "validate_repo"]

_WHERE = {
    "Problem": "haios.errors",
    "RepoConfig": "haios.config.model",
    "parse_duration": "haios.config.model",
    "ValidationReport": "haios.config.validate",
    "load_repo": "haios.config.validate",
    "validate_repo": "haios.config.validate",
}


__getattr__ = exports(__name__, _WHERE)
