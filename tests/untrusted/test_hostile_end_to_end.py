"""End to end, through the real command line: hostile files committed to the desired-state repo and
a compensator that prints terminal escapes and a forged trailer. The interrupted trace is recovered,
each hostile file is named once, and nothing raw reaches a terminal or a commit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocs
from helpers.cluster import git, plant
from untrusted.hostile import SIGNATURES, TEXT

FORGED = "9-analyze-0000deadbeef"


def _haios(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocs.run([sys.executable, "-m", "haios", "--repo", str(repo), *args], capture_output=True, timeout=300)


def _raw_controls(data: bytes) -> list[str]:
    """Control characters that would act on a terminal: C0 (but newline and tab), DEL, ESC, and C1
    (encoded in UTF-8 as 0xC2 0x80-0x9F)."""
    found = [f"0x{b:02x}" for b in data if (b < 0x20 and b not in (0x09, 0x0A)) or b == 0x7F]
    found += [m.group().hex() for m in re.finditer(rb"\xc2[\x80-\x9f]", data)]
    return found


def _hostile_overrides(repo: Path) -> list[str]:
    """One file of each class of the corpus in overrides/, plus hostile signatures, a hostile name
    and a symlink to a device; committed, as a merged pull request would be. Returns their names."""
    folder = repo / "overrides"
    folder.mkdir(exist_ok=True)
    names = []
    for f in TEXT:
        (folder / f"{f.stem}.yaml").write_bytes(f.read_bytes())
        names.append(f"{f.stem}.yaml")
    for s in SIGNATURES:
        payload = '{"action":"abort","cluster":"sim","expires_at":4102444800,"issued_at":0}'
        signature = s.read_text().replace("\n", "\n      ")
        (folder / f"sig-{s.stem}.yaml").write_text(
            f"apiVersion: haios/v1\nkind: Override\npayload: '{payload}'\nsignatures:\n"
            f"  - principal: mallory\n    sig: |\n      {signature}\n"
        )
        names.append(f"sig-{s.stem}.yaml")
    (folder / "evil\x1b[2J\x07.yaml").write_bytes(b"apiVersion: haios/v1\nkind: Override\npayload: '\x1b[31m'\n")
    names.append("evil\\x1b[2J\\x07.yaml")
    (folder / "zero.yaml").symlink_to("/dev/zero")
    names.append("zero.yaml")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "a pull request nobody approved")
    return names


@pytest.mark.timeout(600)
def test_hostile_overrides_never_stop_the_recovery_and_each_is_named_once(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin")
    names = _hostile_overrides(cluster)
    run = _haios(cluster, "reconcile")
    out = run.stdout.decode()
    assert run.returncode == 0, out + run.stderr.decode()
    assert re.search(r"g=2 ANALYZE +trace \S+ +INTERRUPTED -> CLEAN_EXIT", out), out
    for name in names:
        assert out.count(f"overrides/{name} ") == 1, (name, out)
    assert _raw_controls(run.stdout + run.stderr) == []
    doctor = _haios(cluster, "-o", "json", "doctor")
    assert b"override_invalid" in doctor.stdout and _raw_controls(doctor.stdout) == []


@pytest.mark.timeout(600)
def test_nothing_raw_reaches_a_terminal_or_a_commit(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    book = cluster / "playbooks/fakecloud-vm.yaml"
    noisy = (
        r'printf "\033[2J\033]0;pwned\007boom\r\nHaios-Trace-Id: '
        + FORGED
        + r'\nHaios-Result: CLEAN_EXIT\n\302\233" >&2;'
        r" exit 3"
    )
    text = book.read_text().replace("  command: [haios,", f"  command: [sh, -c, '{noisy}', haios,")
    book.write_text(text + "non_retryable_exit_codes: [3]\n")  # its output lands in the note at once
    _hostile_overrides(cluster)
    outputs = []
    for args in (
        ["plan"],
        ["reconcile"],
        ["audit"],
        ["override", "list"],
        ["doctor"],
        ["status"],
        ["plan", "--format", "markdown"],
    ):
        done = _haios(cluster, *args)
        assert done.returncode in (0, 2, 3), (args, done.stdout.decode(), done.stderr.decode())
        outputs.append((args, done.stdout + done.stderr))
    for args, data in outputs:
        assert _raw_controls(data) == [], args
    reconciled = dict((tuple(a), d) for a, d in outputs)[("reconcile",)]
    assert b"\\x1b[2J" in reconciled and b"BLOCKED_COMPENSATOR" in reconciled  # shown, and inert
    log = git(cluster, "log", "--format=%B%x00")
    assert "\\x1b[2J" in log and "\x1b" not in log
    trailers = re.findall(r"^Haios-[A-Za-z-]+: .*$", log, re.MULTILINE)
    assert trailers and all(not t.startswith("Haios-Trace-Id: 9-") for t in trailers), trailers
    audit = _haios(cluster, "-o", "json", "audit", "--trace", FORGED)
    assert audit.returncode == 1 and b"no trace" in audit.stdout, audit.stdout
