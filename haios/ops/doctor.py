"""``haios doctor`` and ``haios status``: every detector and every integrity check, as one report.

The report's JSON form is versioned (``schema: haios-doctor/v1``, described by
``schemas/doctor-report.schema.json``). Each finding names its kind, severity, node(s), g and phase,
the evidence it rests on, when it was first seen, and the command that fixes it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, controlfile
from ..budget import fx_age as rates_age
from ..config import load_repo
from ..config.model import PHASES, RepoConfig
from ..config.validate import check_override_file
from ..config.yamlload import load_status
from ..coord import holder_words, open_backend
from ..coord.etcd import EtcdBackend
from ..detect.detectors import (
    Finding,
    NodeObservation,
    Thresholds,
    run_detectors,
    unrecorded_ends,
)
from ..detect.phi import Estimators
from ..errors import EXIT_OK, EXIT_PENDING, EXIT_VERIFICATION, ConfigError, HaiosError, Problem
from ..events import make
from ..fsutil import atomic_write, makedirs_durable
from ..layout import MEMBERSHIP_FILE, RECORDS, TOMBSTONES_FILE
from ..metrics import node_io
from ..node.transaction import crash_window
from ..recovery import clockgc
from ..recovery import journal as journals
from ..recovery.journal import trace_for
from ..recovery.membership import load as load_membership
from ..timefmt import parse_utc, utc
from ..transport import DEFAULT_PARALLEL, MIRROR_DIR, ClusterTransport, open_transport
from ..transport.ssh import compatible
from ..untrusted import read_json
from ..wal import verify
from .observe import CACHE_DIR, observe

SCHEMA = "haios-doctor/v1"


@dataclass
class NodeRow:
    node: str
    health: str
    g: int | None
    ph: str | None
    heartbeat_age_s: float | None
    wal: str
    last_lamport: int
    records: int


@dataclass
class DoctorReport:
    repo: Path
    generated_at: float
    convicted: bool
    pause_reason: str
    nodes: list[NodeRow] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    bytes_read: int = 0

    def held_back(self, f: Finding) -> bool:
        """Whether the local-pause rule holds ``f`` back on this pass: a silence this observer measured
        across its own stall. A held-back finding is still listed and still makes the cluster unhealthy."""
        return f.observer_measured and not self.convicted

    @property
    def counted(self) -> list[Finding]:
        """The findings this pass convicts on (every one but those held back)."""
        return [f for f in self.findings if not self.held_back(f)]

    @property
    def healthy(self) -> bool:
        """No finding an operator must act on (INFO notes, such as a node yet to beat, do not count)."""
        return not any(f.severity != "info" for f in self.findings)

    def exit_code(self) -> int:
        """0 healthy, 5 a node failed verification (host key), 2 other findings (held back or not)."""
        if any(f.kind == "host_key" for f in self.findings):
            return EXIT_VERIFICATION
        return EXIT_OK if self.healthy else EXIT_PENDING

    def events(self) -> list[dict[str, Any]]:
        """The report as events (:mod:`haios.events`): one per finding, then the pass's end."""
        at = self.generated_at
        out = [
            make(
                "finding",
                f.evidence.get("trace_id") if isinstance(f.evidence.get("trace_id"), str) else None,
                ts=at,
                kind=f.kind,
                severity=f.severity,
                counted=f in self.counted,
                nodes=list(f.nodes),
                g=f.g,
                phase=f.phase,
                summary=f.summary,
                fix=f.fix,
            )
            for f in self.findings
        ]
        out.append(make("doctor", ts=at, healthy=self.healthy, exit_code=self.exit_code(), findings=len(self.findings)))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "repo": str(self.repo),
            "generated_at": utc(self.generated_at),
            "healthy": self.healthy,
            "convicted": self.convicted,
            "pause_reason": self.pause_reason or None,
            "bytes_read": self.bytes_read,
            "nodes": [row.__dict__ for row in self.nodes],
            "findings": [
                {
                    "kind": f.kind,
                    "severity": f.severity,
                    "nodes": list(f.nodes),
                    "g": f.g,
                    "phase": f.phase,
                    "summary": f.summary,
                    "evidence": f.evidence,
                    "fix": f.fix,
                    "first_seen": utc(f.first_seen),
                    "counted": not self.held_back(f),
                }
                for f in self.findings
            ],
        }


# findings about one transition that recovery handles as a trace: their evidence names that trace
INCIDENT_KINDS = frozenset({"wal_gap", "partial_commit", "exec_sla", "state_behind_wal", "state_older_than_wal"})


def _fx(repo: Path, config: RepoConfig, at: float) -> list[Finding]:
    """Rates that are a problem: only once recovery converts between currencies (the budget's limits
    and the playbooks' costs name more than one), the shipped defaults or rates past ``fx_max_age``."""
    if config.blocking("policies/budget.yaml", "policies/fx.yaml"):
        return []  # its own config finding says why
    currencies = sorted(config.currencies())
    if len(currencies) < 2:
        return []  # nothing is converted: the rates are never used
    fix = f"haios --repo {repo} budget fx-import"  # fetches today's file from the ECB
    if config.fx.default:
        return [
            Finding(
                "fx_default",
                "warning",
                (),
                None,
                None,
                f"costs are converted between {', '.join(currencies)}, but policies/fx.yaml holds the rates "
                "haios ships, never imported: import rates",
                {"currencies": currencies, "source": config.fx.source or "default"},
                fix,
            )
        ]
    age = rates_age(config.fx, at)
    if age <= config.budget.fx_max_age:
        return []
    return [
        Finding(
            "fx_stale",
            "warning",
            (),
            None,
            None,
            f"policies/fx.yaml rates are of {config.fx.date}, {age / 86400:.1f} days old "
            f"(limit {config.budget.fx_max_age / 86400:g} days): import rates",
            {"date": config.fx.date, "currencies": currencies},
            fix,
        )
    ]


def _integrity(obs: NodeObservation, root: Path, view: Path, full: bool, replicated: bool = False) -> list[Finding]:
    """Reachability, control files and the WAL of one node; ``root`` is where the node keeps it,
    ``view`` where this machine reads it (the same for a local node, a mirror for an ssh node)."""
    out = []
    if obs.refused:
        out.append(
            Finding(
                "host_key",
                "critical",
                (obs.node,),
                None,
                None,
                obs.error or "host key mismatch",
                {},
                "compare the presented fingerprint with the node's own (ssh-keygen -lf on it); fix the pin in "
                "haios.yaml or known_hosts only if the change is expected",
            )
        )
        return out
    if not obs.reachable:
        out.append(
            Finding(
                "unreachable",
                "critical",
                (obs.node,),
                None,
                None,
                obs.error or "not reachable",
                {},
                obs.hint or f"check that {root} exists and is readable",
            )
        )
        return out
    for message in obs.control_errors:
        out.append(
            Finding(
                "control_file",
                "critical",
                (obs.node,),
                None,
                None,
                message,
                {"root": str(root)},
                "restore the file from the node's snapshot or a peer; never edit a control file by hand",
            )
        )
    out += _state_behind(obs)
    wal_error = obs.wal_error
    if full and wal_error is None:
        report = verify(view / "wal")
        if report.corruption is not None:
            wal_error = report.corruption.as_dict()
    if wal_error is not None:
        torn = wal_error["torn_tail"]
        out.append(
            Finding(
                "wal_torn_tail" if torn else "wal_corrupt",
                "warning" if torn else "critical",
                (obs.node,),
                None,
                None,
                f"WAL {'torn tail' if torn else 'mid-log corruption'} at segment {wal_error['segment']} offset {wal_error['offset']}: {wal_error['reason']}",
                wal_error,
                f"haios wal repair {root / 'wal'}"
                if torn
                else (
                    f"haios node rejoin {obs.node}   # rebuilds the WAL from the replicas its peers hold"
                    if replicated
                    else f"restore {root / 'wal'} from a replica (or: haios wal repair --force {root / 'wal'})"
                ),
            )
        )
    return out


def _state_behind(obs: NodeObservation) -> list[Finding]:
    """state.txt that does not know of a phase its WAL ended: a crash right after the end record
    (reconcile finishes the rewrite), or an older or edited state.txt (a human checks first)."""
    ends = unrecorded_ends(obs)
    if not ends:
        return []
    state = obs.state or {}
    last = ends[-1]
    says = f"state.txt of {obs.node} says (g={state.get('g')}, {state.get('ph')})"
    evidence = {"state": [state.get("g"), state.get("ph")], "ends": [[s.g, s.phase, s.ended] for s in ends]}
    if crash_window(state, len(ends)):
        return [
            Finding(
                "state_behind_wal",
                "warning",
                (obs.node,),
                last.g,
                last.phase,
                f"{says}, in progress; its WAL ended (g={last.g}, {last.phase}) with {last.ended}: the node stopped "
                "between the record and the rewrite of state.txt",
                evidence,
                "haios reconcile   # brings state.txt up to the WAL",
            )
        ]
    return [
        Finding(
            "state_older_than_wal",
            "critical",
            (obs.node,),
            last.g,
            last.phase,
            f"{says}, but its WAL ended {len(ends)} phase(s) after that, up to (g={last.g}, {last.phase}): an older "
            "or edited state.txt (a node root restored in part?)",
            evidence,
            f"check {obs.node}'s data/ against its WAL (haios wal inspect), then sign a resume override for the trace "
            "'haios plan' names: reconcile then brings state.txt up to the WAL",
        )
    ]


def _replication(
    config: RepoConfig, transport: ClusterTransport, observations: dict[str, NodeObservation]
) -> list[Finding]:
    """A WAL that is gone although the node committed transitions, and LAGGING replica peers (SPEC §6.1)."""
    replicated = config.cluster.replication.mode != "off"
    out = []
    for node, obs in sorted(observations.items()):
        if not obs.reachable:
            continue
        if obs.records == 0 and (obs.state or {}).get("wal_cursor"):
            out.append(
                Finding(
                    "wal_missing",
                    "critical",
                    (node,),
                    None,
                    None,
                    f"the WAL is gone although {node} has committed transitions (state.txt points into it)",
                    {},
                    f"haios node rejoin {node}   # rebuilds it from the replicas its peers hold"
                    if replicated
                    else "restore the node's wal/ from a backup; without replication no peer holds a copy",
                )
            )
        if not replicated:
            continue
        try:
            raw = transport.read_file(node, "replication")
            body = controlfile.load_mapping(controlfile.decode(raw, node)) if raw is not None else {}
        except HaiosError:
            continue  # the node's own findings say why it cannot be read
        for peer, mark in sorted((body.get("lagging") or {}).items()):
            out.append(
                Finding(
                    "replica_lagging",
                    "warning",
                    (node, peer),
                    None,
                    None,
                    f"{peer} is LAGGING in {node}'s replica group: an ack took {float(mark['ack_s']) * 1000:.0f} ms, "
                    f"write_timeout {float(mark['timeout_s']) * 1000:.0f} ms; {node}'s writes wait for the others",
                    {"peer": peer, **mark},
                    f"check {peer}'s disk and link; it is taken back once it keeps up "
                    f"(haios node replication {node} shows the group)",
                )
            )
    return out


def _coordination(config: RepoConfig) -> list[Finding]:
    """Each etcd endpoint that does not answer as a member of a cluster with a leader (SPEC §6.2)."""
    if config.cluster.coordination.backend != "etcd":
        return []
    try:
        backend = open_backend(config)
    except HaiosError as exc:
        return [Finding("coordination", "critical", (), None, None, exc.message, {}, exc.hint or "")]
    assert isinstance(backend, EtcdBackend)
    health = backend.health()
    down = {url: why for url, why in health.items() if why is not None}
    severity = "critical" if len(down) == len(health) else "warning"
    return [
        Finding(
            "coordination",
            severity,
            (),
            None,
            None,
            f"etcd endpoint {url} does not answer ({why})"
            + ("; no endpoint answers: reconcile cannot take locks" if severity == "critical" else ""),
            {"endpoint": url, "error": why},
            f"check the etcd member at {url} (etcdctl --endpoints {url} endpoint health)",
        )
        for url, why in sorted(down.items())
    ]


def _stale_leases(config: RepoConfig, at: float) -> list[Finding]:
    """Recovery leases left behind by a reconciler that died or overran (SPEC §4.6)."""
    try:
        backend = open_backend(config)
        leases = [(shard, backend.read(shard)) for shard in PHASES]
    except HaiosError as exc:
        return [
            Finding(
                "locks",
                "warning",
                (),
                None,
                None,
                f"the recovery leases cannot be read: {exc.message}",
                {},
                exc.hint or "",
            )
        ]
    out = []
    for shard, lease in leases:
        if lease is None or lease.released or lease.live(at):
            continue
        why = "its holder's process is gone" if lease.expires > at else f"it expired {at - lease.expires:.0f} s ago"
        out.append(
            Finding(
                "lease_stale",
                "warning",
                (),
                None,
                shard,
                f"shard {shard} is still leased to {holder_words(lease.holder)} for trace {lease.trace_id}, but {why}",
                {
                    "holder": lease.holder,
                    "trace_id": lease.trace_id,
                    "token": lease.token,
                    "expires": utc(lease.expires),
                },
                f"haios --repo {config.path} reconcile   # takes the lease over and resumes trace {lease.trace_id}",
            )
        )
    return out


def _unreadable_status(path: Path, membership: ConfigError | None) -> list[Finding]:
    """A finding for each of haios's own cluster-wide records under ``status/`` that cannot be read
    (restored by hand, or tampered with), before a run that needs it fails on it (``membership``:
    why the membership record, read with its own checks, cannot be)."""
    findings = []
    for rel in RECORDS:
        error = membership if rel == MEMBERSHIP_FILE else None
        if rel != MEMBERSHIP_FILE:
            try:
                if rel == TOMBSTONES_FILE:
                    clockgc.load(path)  # every tombstone checked, as the clock GC reads them
                else:
                    load_status(path / rel, "a readable haios record", rel)
            except ConfigError as exc:
                error = exc
        if error is not None:
            findings.append(
                Finding(
                    "status_unreadable",
                    "critical",
                    (),
                    None,
                    None,
                    error.message,
                    {"file": rel},
                    f"git -C {path} checkout -- {rel}",
                )
            )
    return findings


def _unreadable_journals(path: Path) -> list[Finding]:
    """A finding for each trace journal that cannot be read: its transition waits, nothing else does."""
    unreadable: list[ConfigError] = []
    journals.open_journals(path, unreadable)
    findings = []
    for error in unreadable:
        file = error.message.split(": ", 1)[0]
        rel = str(Path(file).relative_to(path)) if Path(file).is_relative_to(path) else file
        shard = journals.unreadable_shard(error)
        findings.append(
            Finding(
                "journal_unreadable",
                "critical",
                (),
                shard[0] if shard else None,
                shard[1] if shard else None,
                error.message,
                {"file": rel},
                f"git -C {path} checkout -- {rel}   # its transition is blocked until it reads again",
            )
        )
    return findings


def _override_files(path: Path, at: float) -> list[Finding]:
    """A finding for each file of ``overrides/`` that cannot act: invalid (one bad file is one
    finding, never the end of the diagnosis) or expired."""
    findings = []
    folder = path / "overrides"
    for file in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        rel = f"overrides/{file.name}"
        override, problems = check_override_file(path, file)
        if override is None:
            problem = problems[0] if problems else None
            findings.append(
                Finding(
                    "override_invalid",
                    "warning",
                    (),
                    None,
                    None,
                    f"{rel} is not a valid override and has no effect: "
                    + (f"{problem.key}: {problem.message}" if problem else "unreadable"),
                    {"file": rel, "line": problem.line if problem else 1},
                    f"git rm {rel}   # 'haios --repo {path} override verify {file}' says why",
                )
            )
            continue
        payload = json.loads(override.payload)
        if payload.get("expires_at", at) < at:
            findings.append(
                Finding(
                    "override_expired",
                    "warning",
                    (),
                    None,
                    None,
                    f"{rel} expired at {utc(payload['expires_at'])}",
                    {"trace_id": payload.get("trace_id")},
                    f"git rm {rel}   # or ask the supervisors for a new one",
                )
            )
    return findings


def _versions(
    transport: ClusterTransport, config: RepoConfig, observations: dict[str, NodeObservation]
) -> list[Finding]:
    """Every reachable ssh node must run a haios whose major.minor version is this one's."""
    out = []
    for spec in config.cluster.nodes:
        obs = observations.get(spec.name)
        if spec.transport != "ssh" or obs is None or not obs.reachable:
            continue
        try:
            # the node's own haios writes its version into every heartbeat; ask only when it did not
            theirs = str((obs.heartbeat or {}).get("haios_version") or transport.version(spec.name))
        except HaiosError as exc:
            out.append(Finding("version", "critical", (spec.name,), None, None, exc.message, {}, exc.hint or ""))
            continue
        if not compatible(theirs, __version__):
            out.append(
                Finding(
                    "version",
                    "critical",
                    (spec.name,),
                    None,
                    None,
                    f"{spec.name} runs haios {theirs}, this reconciler {__version__}: not compatible",
                    {"node": theirs, "here": __version__},
                    f"install haios {__version__} on {spec.name}",
                )
            )
    return out


IO_JUDGED_FROM = 1 << 20  # data bytes: below, a node's fixed per-record costs say more than its writes


def _io_overhead(repo: Path, budget: float, seen: dict[str, NodeObservation]) -> list[Finding]:
    """A node that writes more locally (WAL + snapshots) per byte of data than the budget allows, once
    it wrote enough data to judge; its replicated total is said beside it, not held against it."""
    out = []
    for n in node_io(repo, {node: o.io for node, o in seen.items() if o.io is not None}):
        ratio = n.local_ratio
        if ratio is None or n.data < IO_JUDGED_FROM or ratio <= budget:
            continue
        mib = 1 << 20
        beside = f"; with its WAL's copies on its peers {n.replicated_ratio:.2f}x" if n.replica else ""
        out.append(
            Finding(
                "io_overhead",
                "warning",
                (n.node,),
                None,
                None,
                f"{n.node} wrote {ratio:.2f}x its data locally (WAL {n.wal / mib:.1f} MiB + snapshots "
                f"{n.snapshot / mib:.1f} MiB for {n.data / mib:.1f} MiB of data), over the budget of {budget:g}x"
                + beside,
                {
                    "ratio": round(ratio, 3),
                    "replicated_ratio": round(n.replicated_ratio or 0.0, 3),
                    "budget": budget,
                    "wal_bytes": n.wal,
                    "snapshot_bytes": n.snapshot,
                    "data_bytes": n.data,
                },
                "an INTENT logs a file whole (base64): have phases write only the files they change, or raise "
                "io.max_overhead_ratio in policies/thresholds.yaml",
            )
        )
    return out


def _membership(repo: Path) -> list[Finding]:
    """Evictions (SPEC §4.7) as status/membership.yaml records them."""
    try:
        m = load_membership(repo)
    except ConfigError as exc:
        return [Finding("membership", "warning", (), None, None, exc.message, {}, exc.hint or "")]
    out = []
    for node in sorted(m.evicted):
        entry = m.nodes[node]
        out.append(
            Finding(
                "evicted",
                "warning",
                (node,),
                None,
                None,
                f"{node} was evicted at {entry.get('evicted_utc')} and takes part in nothing",
                {"isolated_since": entry.get("isolated_utc"), "why": entry.get("why")},
                f"haios --repo {repo} node rejoin {node}   # once it is reachable and healthy",
            )
        )
    for node in m.blocked:
        entry = m.nodes[node]
        out.append(
            Finding(
                "eviction_blocked",
                "critical",
                (node,),
                None,
                None,
                f"{node} has been isolated since {entry.get('isolated_utc')}, but evicting it would leave no "
                "healthy majority",
                {"why": entry.get("why")},
                f"restore connectivity to {node} or to enough other members (page)",
            )
        )
    for node in m.deferred:
        entry = m.nodes[node]
        out.append(
            Finding(
                "eviction_deferred",
                "warning",
                (node,),
                None,
                None,
                f"{node} is due for eviction since {utc(float(entry['deferred_since']))}, deferred: at most one "
                "member is evicted per partition window",
                {"isolated_since": entry.get("isolated_utc"), "why": entry.get("why")},
                f"haios --repo {repo} reconcile   # evicts it once the window has passed, if it is still isolated",
            )
        )
    for node in m.pending:
        if node in m.deferred:
            continue
        entry = m.nodes[node]
        out.append(
            Finding(
                "pending_eviction",
                "warning",
                (node,),
                None,
                None,
                f"{node} has been isolated since {entry.get('isolated_utc')}; eviction after {entry.get('evict_after_utc')}",
                {"why": entry.get("why")},
                f"restore {node}'s connectivity before then, or let the eviction happen",
            )
        )
    return out


def _health(obs: NodeObservation, findings: list[Finding]) -> str:
    kinds = {f.kind for f in findings if obs.node in f.nodes}
    for kind, label in (
        ("host_key", "REFUSED"),
        ("evicted", "EVICTED"),
        ("unreachable", "UNREACHABLE"),
        ("wal_corrupt", "CORRUPT"),
        ("control_file", "CORRUPT"),
        ("partition", "PARTITIONED"),
        ("partial_commit", "HALF-DONE"),
        ("wal_gap", "HALF-DONE"),
        ("left_out", "BEHIND"),
        ("wal_torn_tail", "TORN-TAIL"),
        ("heartbeat_loss", "UNHEALTHY"),
        ("exec_sla", "SLOW"),
        ("heartbeat_never", "NEW"),
    ):
        if kind in kinds:
            return label
    return "OK"


def _config_finding(repo: Path, summary: str, evidence: dict[str, Any]) -> Finding:
    """A file of the desired-state repo that is not valid (``haios validate`` lists its problems)."""
    return Finding("config", "critical", (), None, None, summary, evidence, f"haios --repo {repo} validate")


@dataclass
class _Gathered:
    """What one doctor pass read: the nodes (through the transport) and this machine's memory of the
    last pass."""

    config: RepoConfig
    local: dict[str, Path]  # where each root is, as the user knows it (a remote path for ssh nodes)
    views: dict[str, Path]  # where haios reads it
    observations: dict[str, NodeObservation]
    durations: dict[str, list[float]]
    versions: list[Finding]
    replication: list[Finding]
    last_pass: float | None
    evicted: set[str]
    membership_error: ConfigError | None


def run_doctor(
    repo: Path | str,
    *,
    now: float | None = None,
    full: bool = False,
    parallelism: int = DEFAULT_PARALLEL,
    timeout: float = 60.0,
) -> DoctorReport:
    """Diagnose the cluster of the desired-state repo at ``repo``: gather what the nodes hold, judge
    it, remember the findings for the next pass.

    ``parallelism`` bounds how many nodes are observed at once over SSH (``--max-parallel``). Local
    nodes are read one after the other: reading a local WAL is CPU-bound, and threads only add
    contention for the interpreter lock (measured: 8 nodes took 1.0 s on one thread, 2.5 s on sixteen).
    """
    path = Path(repo)
    at = time.time() if now is None else now
    report = DoctorReport(path, at, convicted=True, pause_reason="")
    try:
        # overrides/ is judged file by file below; a file that not every decision needs is a finding
        config = load_repo(path, overrides=False, degraded=True)
    except ConfigError as exc:
        if not exc.problems:
            raise
        report.findings += [
            _config_finding(path, str(p), {"file": p.file, "line": p.line, "key": p.key})
            for p in exc.problems
            if isinstance(p, Problem)
        ]
        return report
    seen = _gather(path, config, parallelism, timeout)
    report.bytes_read = sum(o.bytes_read for o in seen.observations.values())
    findings = _judge(path, seen, report, at, full)
    _remember(path, seen, report, findings, at)
    return report


def _gather(path: Path, config: RepoConfig, parallelism: int, timeout: float) -> _Gathered:
    local = {n.name: n.local_root(path) if n.transport == "local" else Path(n.root) for n in config.cluster.nodes}
    views = {
        n.name: local[n.name] if n.transport == "local" else path / MIRROR_DIR / n.name for n in config.cluster.nodes
    }
    transport = open_transport(path, config)
    remote = any(n.transport == "ssh" for n in config.cluster.nodes)
    try:
        observations, durations = observe(
            path, transport, sorted(local), parallelism=parallelism if remote else 1, timeout=timeout
        )
        versions = _versions(transport, config, observations)
        replication = _replication(config, transport, observations)
    finally:
        transport.close()
    pass_file = path / CACHE_DIR / "pass.json"
    try:
        last_pass: float | None = float(read_json(pass_file, "status", within=pass_file.parent)["at"])
    except (HaiosError, ValueError, KeyError, TypeError):  # none yet, or not one haios wrote: no memory
        last_pass = None
    membership_error: ConfigError | None = None
    try:
        evicted = load_membership(path).evicted  # their own findings say what to do: rejoin
    except ConfigError as exc:
        evicted, membership_error = set(), exc
    return _Gathered(
        config, local, views, observations, durations, versions, replication, last_pass, evicted, membership_error
    )


def _judge(path: Path, seen: _Gathered, report: DoctorReport, at: float, full: bool) -> list[Finding]:
    """Every finding: the detectors over the active members, then each node's files and every
    cluster-wide record."""
    config, t = seen.config, seen.config.thresholds
    estimators = Estimators.from_thresholds(t)
    estimators.feed(seen.durations)
    thresholds = Thresholds(
        heartbeat_interval=t.heartbeat_interval,
        unhealthy_after=t.heartbeat_unhealthy_after,
        partition_window=t.partition_window,
        sla={phase: policy.sla for phase, policy in config.desired.phases.items()},
    )
    active = set(config.desired.active_members()) - seen.evicted
    observed = {n: o for n, o in seen.observations.items() if n in active}
    detection = run_detectors(observed, estimators, thresholds, at, last_pass=seen.last_pass)
    report.convicted, report.pause_reason = detection.convicted, detection.reason
    findings = list(detection.findings)
    gone = {f.nodes[0] for f in seen.replication if f.kind == "wal_missing"}
    if gone:  # a node whose WAL is gone has no record of any phase: one finding says so, not one per phase
        findings = [f for f in findings if not (f.kind in ("partial_commit", "wal_gap") and set(f.nodes) <= gone)]
    replicated = config.cluster.replication.mode != "off"
    for node, obs in seen.observations.items():
        findings += _integrity(obs, seen.local[node], seen.views[node], full, replicated)
        findings += _clock_skew(node, obs, at, t.max_clock_skew)
    findings += _policy_stale(seen)
    # a file not every decision needs: the transitions that need it wait (plan says which)
    findings += [_config_finding(path, problem, {"file": rel}) for rel, problem in config.unreadable.items()]
    findings += _fx(path, config, at)
    findings += _override_files(path, at)
    findings += _unreadable_journals(path)
    findings += _unreadable_status(path, seen.membership_error)
    findings += seen.versions
    findings += seen.replication
    findings += _coordination(config)
    findings += _stale_leases(config, at)
    findings += _membership(path)
    findings += _io_overhead(path, t.max_io_overhead_ratio, seen.observations)
    return findings


def _policy_stale(seen: _Gathered) -> list[Finding]:
    """Members whose policy file is not the compiled desired state: what was committed (a freeze, a
    suspension, a membership or threshold change) does not hold there yet."""
    config = seen.config
    if any(rel.startswith("schemas/") for rel in config.unreadable):
        return []  # the compiled policy would lack a schema: the config finding says what to mend
    want = config.compile_policy()["digest"]
    gone = {name for name, m in config.desired.membership.items() if m.status == "decommissioned"}
    out = []
    for node, obs in sorted(seen.observations.items()):
        if node in gone or not obs.reachable or obs.refused or obs.policy_digest == want:
            continue
        have = obs.policy_digest[:12] if obs.policy_digest else "none"
        out.append(
            Finding(
                "policy_stale",
                "warning",
                (node,),
                None,
                None,
                f"{node} enforces an older desired state (policy digest {have}, the committed one {want[:12]}): "
                "max_g, suspend, membership and thresholds committed since do not hold there",
                {"have": obs.policy_digest, "want": want},
                "haios reconcile",
            )
        )
    return out


def _clock_skew(node: str, obs: NodeObservation, at: float, limit: float) -> list[Finding]:
    if obs.heartbeat is None:
        return []
    ahead = parse_utc(obs.heartbeat["wall_time"]) - at
    if ahead <= limit:
        return []
    return [
        Finding(
            "clock_skew",
            "warning",
            (node,),
            None,
            None,
            f"heartbeat written {ahead:.1f} s in the future (limit {limit:g} s)",
            {"heartbeat": obs.heartbeat},
            f"synchronise {node}'s clock (NTP)",
        )
    ]


def _remember(path: Path, seen: _Gathered, report: DoctorReport, findings: list[Finding], at: float) -> None:
    """The report's findings — first seen when (remembered between passes), each fix runnable as
    printed, the incident's trace id — and its rows; then this pass is remembered."""
    seen_file = path / CACHE_DIR / "findings.json"
    try:
        remembered = read_json(seen_file, "status", within=seen_file.parent)
    except HaiosError:
        remembered = None
    first: dict[str, float] = (
        {str(k): float(v) for k, v in remembered.items() if isinstance(v, (int, float))}
        if isinstance(remembered, dict)
        else {}
    )
    fixes = _Fixes(path, seen)
    report.findings = [
        Finding(
            **{
                **f.__dict__,
                "first_seen": first.get(f.key, at),
                "fix": fixes.concrete(f.fix),
                "evidence": fixes.traced(f),
            }
        )
        for f in findings
    ]
    makedirs_durable(path / CACHE_DIR)
    atomic_write(
        seen_file, json.dumps({f.key: f.first_seen for f in report.findings}, sort_keys=True).encode(), durable=False
    )
    atomic_write(path / CACHE_DIR / "pass.json", json.dumps({"at": at}).encode(), durable=False)
    for node in sorted(seen.observations):
        report.nodes.append(_row(node, seen.observations[node], report.findings, at))


def _row(node: str, obs: NodeObservation, findings: list[Finding], at: float) -> NodeRow:
    age = at - parse_utc(obs.heartbeat["wall_time"]) if obs.heartbeat else None
    wal = "ok" if obs.reachable else "-"  # a WAL that was not read is not known to be ok
    if obs.wal_error is not None:
        wal = "torn tail" if obs.wal_error["torn_tail"] else "CORRUPT"
    state = obs.state or {}
    return NodeRow(
        node,
        _health(obs, findings),
        state.get("g"),
        state.get("ph"),
        None if age is None else round(age, 1),
        wal,
        obs.last_lamport,
        obs.records,
    )


class _Fixes:
    """What makes a finding's fix runnable as printed and its evidence name the incident's trace."""

    def __init__(self, path: Path, seen: _Gathered) -> None:
        self.path, self.seen = path, seen
        self.remote = {n.name: n.root for n in seen.config.cluster.nodes if n.transport == "ssh"}
        self.traces: dict[tuple[int, str], str] = {}

    def concrete(self, fix: str) -> str:
        """Detectors do not know where roots are; the report does."""
        for node, remote_root in self.remote.items():  # 'haios node heartbeat' beats local nodes only
            if fix.startswith(f"haios --repo <repo> node heartbeat {node} "):
                return (
                    f"on {node}: haios agent {remote_root}   # or its unit haios-agent@ (docs/ssh.md, The node's agent)"
                )
        fix = fix.replace("<repo>", str(self.path))
        for node, root in self.seen.local.items():
            fix = fix.replace(f"<root of {node}>", str(root))
        return fix

    def traced(self, f: Finding) -> dict[str, Any]:
        """The evidence, with the id of the recovery trace that ``plan`` gives this incident (the id an
        override names); the phase's own trace from its BEGIN_PHASE stays as ``phase_trace_id``."""
        if f.g is None or f.phase is None or f.kind not in INCIDENT_KINDS:
            return f.evidence
        evidence = dict(f.evidence)
        if "trace_id" in evidence:
            evidence["phase_trace_id"] = evidence.pop("trace_id")
        key = (f.g, f.phase)
        if key not in self.traces:  # several findings of one transition: its journals are read once
            with contextlib.suppress(ConfigError):  # a journal of (g, phase) that cannot be read: its own finding
                self.traces[key] = trace_for(self.path, f.g, f.phase, self.seen.observations)
        if key in self.traces:
            evidence["trace_id"] = self.traces[key]
        return evidence
