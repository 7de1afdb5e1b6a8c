"""The desired-state repo: load (ruamel.yaml) → validate (jsonschema) → frozen dataclasses."""

from ..errors import Problem
from .model import RepoConfig, parse_duration
from .validate import ValidationReport, load_repo, validate_repo

__all__ = ["Problem", "RepoConfig", "ValidationReport", "load_repo", "parse_duration", "validate_repo"]
