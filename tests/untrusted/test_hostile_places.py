"""Every text file of the hostile corpus, planted in every place haios reads: ``validate``, ``plan``
and ``doctor`` return a value or the documented HaiosError naming the file. Never another
exception, never a crash: one bad file is one finding."""

from __future__ import annotations

from pathlib import Path

import pytest
from untrusted.hostile import CORE, DESIRED, NODE_FILES, STATUS, TEXT, as_control_file, outcome, planted

from haios.config import validate_repo
from haios.ops import build
from haios.ops.doctor import run_doctor
from haios.recovery import Plan

# files every decision of a run depends on: a bad one is an error of the run (exit 1), naming it
RUN_LEVEL = CORE
# a bad one of these is named in the plan, and blocks only the transitions that need it
PER_TRACE = (
    "policies/budget.yaml",
    "policies/fx.yaml",
    "policies/rbac.yaml",
    "playbooks/fakecloud-vm.yaml",
    "schemas/hostile.schema.json",
    "status/membership.yaml",
)
NODE = tuple(f"nodes/node-1/{name}" for name in NODE_FILES)


def _try_everything(repo: Path, rel: str, data: bytes) -> list[str]:
    wrong = []
    with planted(repo, rel, data):
        named = False
        if not rel.startswith("nodes/"):  # validate reads the repo's files, never a node root
            report = validate_repo(repo)  # never raises for a file that is there
            named = any(p.file == rel for p in report.problems)
            if rel in DESIRED and not named:
                wrong.append(f"validate did not name {rel}")
        built: list[Plan] = []
        planned = outcome(lambda: built.append(build(repo)[0]))
        if planned is not None and (rel not in RUN_LEVEL or Path(rel).name not in planned.message):
            wrong.append(f"plan: {planned.one_line()[:300]}")
        if rel in PER_TRACE and built and (named or rel.startswith("status/")) != (rel in built[0].unreadable):
            wrong.append(f"plan: unreadable is {sorted(built[0].unreadable)}")
        assert outcome(lambda: run_doctor(repo)) is None
    return wrong


@pytest.mark.parametrize("rel", [*DESIRED, *STATUS])
def test_hostile_repo_files_are_one_finding(cluster: Path, rel: str) -> None:
    wrong = [f"{f.name}: {w}" for f in TEXT for w in _try_everything(cluster, rel, f.read_bytes())]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("rel", NODE)
def test_hostile_node_files_are_one_finding(cluster: Path, rel: str) -> None:
    """Raw, and behind a valid integrity footer (anyone who can write a node root can compute one)."""
    wrong = []
    for f in TEXT:
        for data in {f.read_bytes(), as_control_file(f.read_bytes())}:
            wrong += [f"{f.name}: {w}" for w in _try_everything(cluster, rel, data)]
        with planted(cluster, rel, f.read_bytes()):  # no footer: always an integrity finding, naming the file
            if not any(Path(rel).name in x.summary for x in run_doctor(cluster).findings):
                wrong.append(f"{f.name}: doctor has no finding naming {rel}")
    assert not wrong, "\n".join(wrong)
