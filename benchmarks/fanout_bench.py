"""Fan-out over SSH: `haios doctor` against Ansible on the same nodes, through the same sshd.

    .venv/bin/python benchmarks/fanout_bench.py [--dir DIR] [--nodes 200] [--records 2000]
                                                [--forks 32] [--repeat 3] [--quick]

NODES node roots (WALs of RECORDS records of whole phases each, as in detect_bench.py) are reached
through one OpenSSH server on loopback, started here with its own host key and config (needs
Debian's openssh-server). The server's config sets `SetEnv SHLVL=1`, which keeps root's shell
start-up files out of every command; both tools use that same server.

Measured side by side in one run, each REPEAT times (medians reported):
- `haios doctor --max-parallel FORKS`: every node's control files and WAL over SFTP. The first pass
  fetches whole WALs ("cold"); later passes fetch only what is new ("warm", the cron steady state);
- `ansible -m ansible.builtin.stat` of each node's state.txt, and `-m ansible.builtin.slurp` of it,
  ansible-core from PyPI, forks FORKS, pipelining on, host keys checked against the same pin, SSH
  connection sharing off (Ansible's ControlMaster would otherwise make every host that resolves to
  127.0.0.1 share one connection, which no real cluster does).

Targets: `haios doctor` faster than Ansible's `stat` >= 5x cold (whole WALs fetched) and >= 10x
warm; the second `plan` after one more transition reads <= 5 % of the bytes over SSH that the first
one read.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import print_table
from detect_bench import build_cluster, one_more_transition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers.sshd import Sshd, make_sshd  # noqa: E402 - the tests' sshd fixture, shared

from haios.config import load_repo  # noqa: E402
from haios.node.heartbeat import beat  # noqa: E402
from haios.ops import build  # noqa: E402
from haios.sim.simulator import SshLayout, reach_through_sshd  # noqa: E402
from haios.transport import open_transport  # noqa: E402


def _env(sshd: Sshd, work: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HAIOS_SSH_IDENTITY": str(sshd.client_key),
        "HAIOS_REMOTE_COMMAND": sshd.remote_command,
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_SSH_ARGS": (
            f"-o ControlMaster=no -o ControlPath=none -o UserKnownHostsFile={work / 'known_hosts'} "
            "-o StrictHostKeyChecking=yes"
        ),
        "ANSIBLE_DEPRECATION_WARNINGS": "False",
        "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    }


def _inventory(repo: Path, sshd: Sshd, work: Path) -> Path:
    config = load_repo(repo)
    lines = ["[nodes]"]
    for spec in config.cluster.nodes:
        lines.append(
            f"{spec.name} ansible_host=127.0.0.1 ansible_port={sshd.port} ansible_user=root "
            f"ansible_ssh_private_key_file={sshd.client_key} root={spec.root}"
        )
    path = work / "inventory.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def _timed(argv: list[str], env: dict[str, str], ok: tuple[int, ...]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - started
    if proc.returncode not in ok:
        raise SystemExit(f"{' '.join(argv[:4])}... exited {proc.returncode}: {(proc.stderr or proc.stdout)[-2000:]}")
    return elapsed


def _plan_bytes(repo: Path) -> int:
    """Bytes one `plan` reads over SSH (in this process, so the transport can count them)."""
    config = load_repo(repo)
    transport = open_transport(repo, config)
    try:
        plan, _ = build(repo, transport=transport)
        if len(plan.reachable) != len(plan.active):
            raise SystemExit(f"plan reached only {len(plan.reachable)} of {len(plan.active)} nodes")
        return sum(getattr(part, "bytes_read", 0) for part in {id(p): p for p in transport.parts.values()}.values())
    finally:
        transport.close()


def run(work: Path, nodes: int, records: int, forks: int, repeat: int) -> list[list[str]]:
    sshd = make_sshd(work / "sshd")
    try:
        (work / "known_hosts").write_text(sshd.known_hosts_line())
        repo = build_cluster(work, nodes, records)
        config = load_repo(repo)
        for spec in config.cluster.nodes:
            beat(spec.local_root(repo), spec.name)  # the nodes' agents say which haios they run
        reach_through_sshd(repo, SshLayout("127.0.0.1", sshd.port, "root", sshd.fingerprint))
        env = _env(sshd, work)
        inventory = _inventory(repo, sshd, work)
        haios = [sys.executable, "-m", "haios", "--repo", str(repo), "-o", "json", "doctor"]
        haios += ["--max-parallel", str(forks)]
        ansible = [str(Path(sys.executable).parent / "ansible"), "nodes", "-i", str(inventory), "-f", str(forks), "-o"]
        stat = [*ansible, "-m", "ansible.builtin.stat", "-a", "path={{ root }}/state.txt"]
        slurp = [*ansible, "-m", "ansible.builtin.slurp", "-a", "src={{ root }}/state.txt"]
        times: dict[str, list[float]] = {"cold": [], "warm": [], "stat": [], "slurp": []}
        times["cold"].append(_timed(haios, env, (0, 2)))
        for _ in range(repeat):  # interleaved, so that drift on a noisy machine hits all alike
            times["warm"].append(_timed(haios, env, (0, 2)))
            times["stat"].append(_timed(stat, env, (0,)))
            times["slurp"].append(_timed(slurp, env, (0,)))
        shutil.rmtree(repo / "status/observed", ignore_errors=True)
        os.environ.update({k: env[k] for k in ("HAIOS_SSH_IDENTITY", "HAIOS_REMOTE_COMMAND")})
        first = _plan_bytes(repo)
        one_more_transition(repo)
        second = _plan_bytes(repo)
    finally:
        sshd.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["stat"] / med["warm"]
    cold = med["stat"] / med["cold"]
    share = second / first if first else 0.0
    return [
        ["measure", "median s", "runs", "vs ansible stat", "target", "ok"],
        [f"haios doctor, warm ({nodes} nodes)", f"{med['warm']:.2f}", str(repeat), f"{ratio:.1f}x faster", ">= 10x", "yes" if ratio >= 10 else "NO"],
        ["haios doctor, cold (whole WALs)", f"{med['cold']:.2f}", "1", f"{cold:.1f}x faster", ">= 5x", "yes" if cold >= 5 else "NO"],
        ["ansible -m stat", f"{med['stat']:.2f}", str(repeat), "1.0x", "", ""],
        ["ansible -m slurp", f"{med['slurp']:.2f}", str(repeat), f"{med['stat'] / med['slurp']:.1f}x", "", ""],
        ["plan bytes over SSH, 1st / 2nd", f"{first} / {second}", "1", f"{100 * share:.1f} %", "<= 5 %", "yes" if share <= 0.05 else "NO"],
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--records", type=int, default=2000, help="WAL records per node")
    parser.add_argument("--forks", type=int, default=32, help="parallelism of both tools")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.records, args.repeat = 6, 200, 1
    work = Path(tempfile.mkdtemp(prefix="fanout-", dir=args.dir))
    try:
        rows = run(work, args.nodes, args.records, args.forks, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    print(json.dumps({"rows": rows}))
    return 0 if all(r[5] != "NO" for r in rows[1:]) else 1


if __name__ == "__main__":
    sys.exit(main())
