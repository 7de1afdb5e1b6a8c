"""Test harness: every test runs in its own temporary directory and may not write outside it, and
no process it started outlives it.

The environment is made hermetic (HOME, XDG dirs, git's global config, haios's log directory all
point into the test's tmp dir), the working directory is the tmp dir, and an audit hook makes any
file write by this process outside the tmp dir fail the test. Subprocesses are started through
``helpers.subprocs`` (each in a process group of its own); when a test ends, what is left of its
groups is killed, and any other process it left running below this one is killed and fails it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import Invoke, subprocs
from hypothesis import HealthCheck, settings
from hypothesis.configuration import set_hypothesis_home_dir

subprocs.become_subreaper()  # orphans of a test's processes stay below this one, to be found
sys.dont_write_bytecode = True  # imports during a test must not write __pycache__ outside tmp

_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="haios-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)  # never .hypothesis/ in the checkout
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, True)
settings.register_profile(
    "haios",
    database=None,  # no .hypothesis/ directory in the checkout
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("haios")

_allowed: list[str] | None = None
_violations: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {
    "os.remove": 1,
    "os.rmdir": 1,
    "os.mkdir": 1,
    "os.rename": 2,
    "os.replace": 2,
    "os.symlink": 2,
    "os.link": 2,
    "os.truncate": 1,
    "os.chmod": 1,
    "shutil.rmtree": 1,
}


def _outside(path: object) -> bool:
    if not isinstance(path, str | bytes | os.PathLike):
        return False
    full = os.path.abspath(os.fsdecode(path))
    assert _allowed is not None
    return not any(full == root or full.startswith(root + os.sep) for root in _allowed)


def _audit(event: str, args: tuple[object, ...]) -> None:
    if _allowed is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
        targets = [path] if writing else []
    elif event in _PATH_EVENTS:
        targets = list(args[: _PATH_EVENTS[event]])
        if event in ("os.symlink", "os.link"):
            targets = targets[1:]  # only the new name is written; the first argument is the link's content
    else:
        return
    for target in targets:
        if _outside(target):
            _violations.append(f"{event} {target!r}")
            raise PermissionError(f"test wrote outside its tmp dir: {event} {target!r}")


sys.addaudithook(_audit)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock-shift",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="run each test as if SECONDS had passed since the session's shared fixtures were made: "
        "time.time() in this process reads that much later once they are built (a slow machine, a long session)",
    )


@pytest.fixture(autouse=True)
def hermetic(
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[Path]:
    """Isolate the test: own HOME, XDG dirs, git config, log dir and cwd; no writes outside tmp."""
    global _allowed
    shift = float(request.config.getoption("clock_shift"))
    if shift:  # session-scoped fixtures are made before any function-scoped one: they are "older" now
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + shift)
    home = tmp_path / "home"
    home.mkdir()
    for var, value in {
        "HOME": home,
        "XDG_STATE_HOME": home / ".local" / "state",
        "XDG_CONFIG_HOME": home / ".config",
        "XDG_CACHE_HOME": home / ".cache",
        "HAIOS_LOG_DIR": tmp_path / "logs",
        "GIT_CONFIG_GLOBAL": home / ".gitconfig",
        "TMPDIR": tmp_path,
    }.items():
        monkeypatch.setenv(var, str(value))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in ("NO_COLOR", "GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    roots = [str(tmp_path_factory.getbasetemp()), _HYPOTHESIS_HOME, "/dev", "/proc"]
    _allowed = [os.path.realpath(r) for r in roots] + [os.path.abspath(r) for r in roots]
    _violations.clear()
    before = set(subprocs.descendants(os.getpid()))
    try:
        yield tmp_path
    finally:
        _allowed = None
        subprocs.reap()
    assert not _violations, f"test wrote outside its tmp dir: {_violations}"
    left = subprocs.leftovers(before)
    subprocs.reap_zombies()
    assert not left, f"test left processes running (killed now): {left}"


@pytest.fixture
def rate(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """``rate("300 trials in 212 s: 85 trials/minute")``: a long test says how fast it went; every
    such line is printed in the run's summary, where a slower machine shows as a lower rate (kept
    in the test's report, so that it reaches the summary from a pytest-xdist worker too)."""
    return lambda text: request.node.user_properties.append(("rate", text))


# the fixtures that start a real service (OpenSSH sshd, an etcd cluster, a Prometheus Pushgateway, a
# network namespace with sshd in it, the agents' lab of five): every test that uses one is marked ``service``
SERVICE_FIXTURES = frozenset({"sshd", "ssh_env", "etcd", "pushgateway", "net", "netlab"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.service)
    # the lab's tests are the longest and mostly serial: handed out first, they run beside the rest
    # instead of after it (a stable sort: every other test keeps its order)
    items.sort(key=lambda item: 0 if item.path.parent.name == "lab" and item.path.parent.parent.name == "tests" else 1)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", [])
        if name == "rate"
    ]
    if lines:
        terminalreporter.section("rates of the long tests")
        for line in sorted(lines):
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    subprocs.reap(services=True)  # the session's shared servers, whatever their fixtures managed


@pytest.fixture
def outside_writes() -> list[str]:
    """The writes outside the tmp dir refused so far in this test (a test may clear it)."""
    return _violations


@pytest.fixture(scope="session")
def repo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A desired-state repo made once by ``haios init`` (3 local nodes); copy it, never modify it."""
    from haios import init_repo

    base = tmp_path_factory.mktemp("template")
    return init_repo(base / "demo-repo", nodes=3).path


@pytest.fixture
def repo(tmp_path: Path, repo_template: Path) -> Path:
    """A fresh copy of the template repo in this test's tmp dir."""
    target = tmp_path / "demo-repo"
    shutil.copytree(repo_template, target, symlinks=True)
    return target


@pytest.fixture
def cli() -> Invoke:
    """Run ``haios ARGS`` in-process; returns typer's Result (exit_code, stdout, stderr)."""
    from typer.testing import CliRunner, Result

    from haios.cli import app

    runner = CliRunner()

    def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
        return runner.invoke(app, [str(a) for a in args], env=env, catch_exceptions=False)

    return invoke


@pytest.fixture(scope="session")
def clean_cluster(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A simulated 3-node cluster at (g=1, IDLE) with a short ANALYZE prior (built once)."""
    from helpers.cluster import quick_cluster

    from haios.sim.simulator import sim_run

    directory = quick_cluster(tmp_path_factory.mktemp("recovery") / "cluster", 3)
    report = sim_run(directory, iterations=1, seed=7, faults={})
    assert report.committed == 5
    return directory


@pytest.fixture
def cluster(tmp_path: Path, clean_cluster: Path) -> Path:
    """A fresh copy of the clean cluster for one test, its nodes' heartbeats as fresh as the test."""
    from helpers.cluster import refresh_heartbeats

    target = tmp_path / "cluster"
    shutil.copytree(clean_cluster, target, symlinks=True)
    refresh_heartbeats(target)
    return target


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[object]:
    """A real 3-member etcd cluster on loopback, stopped (by PID) after the test."""
    from helpers.etcd import EtcdCluster

    directory = tmp_path / "etcd"
    directory.mkdir()
    cluster = EtcdCluster(directory)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-node simulated cluster run with faults until a transition was left half done, then
    reconciled; built once, and no test changes it (the observation cache aside)."""

    from helpers.cluster import quick_cluster

    from haios.ops import build, reconcile
    from haios.sim.simulator import sim_run

    directory = quick_cluster(tmp_path_factory.mktemp("metrics") / "cluster", 4)
    for seed in range(1, 40):  # bounded: a killed writer turns up within a few seeds
        report = sim_run(directory, iterations=1, seed=seed, faults={"kill": 0.5, "slowfsync": 0.3})
        if report.stopped_at is not None:
            break
    else:
        pytest.fail("no seed left a transition half done")
    deadline = time.monotonic() + 30
    while any(t.verdict == "wait" for t in build(directory)[0].traces):  # the Φ timeout
        assert time.monotonic() < deadline
        time.sleep(0.2)
    result = reconcile(directory)
    assert result.exit_code() == 0, result.to_json()
    return directory
