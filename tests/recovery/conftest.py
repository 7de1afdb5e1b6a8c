"""A simulated 3-node cluster at (g=1, IDLE), copied fresh for every test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers.cluster import git

from haios.sim.simulator import sim_init, sim_run


@pytest.fixture(scope="session")
def clean_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("recovery") / "cluster"
    sim_init(directory, 3)
    thresholds = directory / "policies/thresholds.yaml"
    thresholds.write_text(thresholds.read_text().replace("    ANALYZE: 500ms", "    ANALYZE: 10ms"))
    git(directory, "commit", "-qam", "tests: a short ANALYZE prior")
    report = sim_run(directory, iterations=1, seed=7, faults={})
    assert report.committed == 5
    return directory


@pytest.fixture
def cluster(tmp_path: Path, clean_cluster: Path) -> Path:
    target = tmp_path / "cluster"
    shutil.copytree(clean_cluster, target, symlinks=True)
    return target
