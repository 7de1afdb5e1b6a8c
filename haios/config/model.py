"""The desired-state repo as frozen dataclasses, built only from files that passed validation.

Defaults are the seed values of SPEC §3–§6; every duration is held in seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..wal.format import PHASES as PHASES  # the five phases: part of the model, fixed by the WAL format

NAME_RE = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
"""Cluster, node, region and supervisor names (use ``fullmatch``)."""
_SSH_ROOT = re.compile(r"/[A-Za-z0-9._+/-]{0,4095}")


def ssh_root_ok(root: str) -> bool:
    """An ssh node's root becomes a word of remote commands: an absolute path of letters, digits and
    ``. _ + - /`` only, without ``..`` components or ``//``."""
    return bool(_SSH_ROOT.fullmatch(root)) and "/../" not in f"{root}/" and "//" not in root


def parse_time(text: str) -> datetime:
    """A time from a policy file (``2026-01-01`` or ``2026-01-01T12:00:00Z``), as an aware UTC
    datetime; a date alone is its midnight UTC, a time without an offset is UTC."""
    value = datetime.fromisoformat(text if "T" in text else f"{text}T00:00:00+00:00")
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def phase_order(g: int, phase: str | None) -> tuple[int, int]:
    """A sortable position of (g, phase); (g, None) — nothing committed in g yet — sorts before ANALYZE."""
    return (g, -1 if phase is None else PHASES.index(phase))


RUNTIME_MODE_K = {"STRICT": 1.2, "NORMAL": 1.6, "DEV_FAST": 2.0}  # SPEC §3
PRIOR_MEANS = {"ANALYZE": 15.0, "BLUEPRINT": 20.0, "CONSTRUCT": 120.0, "VALIDATE": 30.0, "IDLE": 10.0}  # SPEC §3

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float | int) -> float:
    """A duration in seconds from a number of seconds or a string such as ``'15s'`` or ``'10m'``.

    >>> parse_duration("10m"), parse_duration("250ms"), parse_duration(3)
    (600.0, 0.25, 3.0)
    """
    if isinstance(value, bool):
        raise ValueError("a duration is not a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration is never negative")
        return float(value)
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a duration: {value!r} (use e.g. '15s', '10m', '2h')")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


@dataclass(frozen=True)
class NodeSpec:
    name: str
    transport: str
    root: str
    address: str | None = None
    port: int = 22
    user: str = "haios"
    host_key: str | None = None
    region: str | None = None

    def local_root(self, repo: Path) -> Path:
        """The node root of a local node (relative roots are relative to the repo)."""
        root = Path(self.root)
        return root if root.is_absolute() else repo / root


@dataclass(frozen=True)
class Coordination:
    backend: str = "git"
    etcd_endpoints: tuple[str, ...] = ()
    etcd_prefix: str = "/haios/"
    etcd_dial_timeout: float = 5.0
    git_remote: str | None = None


@dataclass(frozen=True)
class Replication:
    mode: str = "off"
    replicas: int = 3


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[NodeSpec, ...]
    coordination: Coordination = Coordination()
    replication: Replication = Replication()

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True)
class Member:
    status: str
    since: str | None = None


@dataclass(frozen=True)
class PhasePolicy:
    on_partial: str = "auto"
    sla: float | None = None
    resume_playbook: str | None = None
    max_resume_attempts: int = 2
    command: tuple[str, ...] | None = None  # what 'haios run' has every member run (haios node run)
    timeout: float = 600.0  # how long that command may run
    resumable: bool = False  # the command skips the steps it logged: killed mid-way, it is resumed


@dataclass(frozen=True)
class DesiredState:
    membership: dict[str, Member]
    phases: dict[str, PhasePolicy]
    suspend: bool = False
    max_g: int | None = None

    def active_members(self) -> list[str]:
        return [name for name, m in self.membership.items() if m.status == "active"]


@dataclass(frozen=True)
class Phi:
    k: float
    window: int = 100
    outlier_cap: float = 3.0
    blend_samples: int = 10
    prior_sigma_ratio: float = 0.5
    priors: dict[str, float] = field(default_factory=lambda: dict(PRIOR_MEANS))


@dataclass(frozen=True)
class Thresholds:
    runtime_mode: str
    phi: Phi
    heartbeat_interval: float = 15.0
    heartbeat_unhealthy_after: int = 3
    partition_window: float = 45.0
    eviction_ttl: float = 1800.0
    eviction_grace: float = 900.0
    lease_ttl: float = 300.0
    max_auto_attempts: int = 2
    parallel_traces: int = 4  # traces of independent transitions a reconcile recovers at once
    t_blocked: float = 3600.0
    sel_max_attempts: int = 5
    sel_backoff_base: float = 2.0
    sel_backoff_cap: float = 900.0
    sel_breaker_failures: int = 3
    sel_breaker_open_for: float = 1800.0
    sticky_window: float = 300.0
    max_migration_fraction: float = 0.25
    write_timeout_factor: float = 2.0
    permit_async_for: float = 1800.0
    max_clock_skew: float = 2.0
    vclock_retention: float = 90 * 86400.0
    max_io_overhead_ratio: float = 2.2  # local writes (WAL + snapshots) per byte of data a phase wrote

    @property
    def heartbeat_window(self) -> float:
        """How long a node may stay silent before it counts as unhealthy (interval x unhealthy_after)."""
        return self.heartbeat_interval * self.heartbeat_unhealthy_after

    def as_dict(self) -> dict[str, Any]:
        """Plain values (durations in seconds), as pushed to nodes in the ``policy`` control file."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, Phi):
                value = {k: getattr(value, k) for k in value.__dataclass_fields__}
            out[name] = value
        return out


@dataclass(frozen=True)
class Limit:
    currency: str
    limit_per_trace: float


@dataclass(frozen=True)
class Budget:
    default: Limit
    regions: dict[str, Limit]
    swing_limit: int = 3
    swing_window: float = 600.0
    fx_max_age: float = 4 * 86400.0

    def for_region(self, region: str | None) -> Limit:
        return self.regions.get(region or "", self.default)


@dataclass(frozen=True)
class FxRates:
    base: str
    date: str | None  # None: the rates haios ships, never imported (``source: default``)
    rates: dict[str, float]
    source: str = ""

    @property
    def default(self) -> bool:
        """The rates shipped with haios, not imported for any date: fine while nothing is converted."""
        return self.date is None


@dataclass(frozen=True)
class Supervisor:
    name: str
    keys: tuple[str, ...]
    active: bool = True
    valid_after: str | None = None
    valid_before: str | None = None


@dataclass(frozen=True)
class Rbac:
    policy_version: int
    supervisors: tuple[Supervisor, ...]


@dataclass(frozen=True)
class Playbook:
    name: str
    run_command: tuple[str, ...] | None
    run_python: str | None
    compensates: str | None = None
    resumes: str | None = None
    description: str = ""
    timeout: float = 300.0
    retryable_exit_codes: tuple[int, ...] | None = None
    non_retryable_exit_codes: tuple[int, ...] = ()
    cost: dict[str, Any] | None = None  # {amount, currency} of one run

    def retryable(self, exit_code: int) -> bool:
        """Whether a run that exited with ``exit_code`` may be tried again later."""
        if exit_code in self.non_retryable_exit_codes:
            return False
        return self.retryable_exit_codes is None or exit_code in self.retryable_exit_codes


@dataclass(frozen=True)
class Signature:
    principal: str
    sig: str


@dataclass(frozen=True)
class Override:
    file: str
    payload: str
    signatures: tuple[Signature, ...]


@dataclass(frozen=True)
class RepoConfig:
    """Everything in a valid desired-state repo."""

    path: Path
    cluster: Cluster
    desired: DesiredState
    thresholds: Thresholds
    budget: Budget
    fx: FxRates
    rbac: Rbac
    playbooks: dict[str, Playbook]
    overrides: tuple[Override, ...]
    data_schemas: tuple[Any, ...] = ()  # DataSchema from haios.config.dataschemas
    # files that are not valid and that not every decision needs (file -> its first problem), loaded
    # with load_repo(degraded=True): each stands here as a placeholder that grants nothing
    unreadable: dict[str, str] = field(default_factory=dict)
    # decommissioned nodes whose vector-clock entries are pruned (status/vclock-tombstones.yaml)
    vclock_pruned: tuple[str, ...] = ()

    def blocking(self, *files: str) -> list[str]:
        """The first problem (``FILE:LINE:COL: KEY: MESSAGE``) of each of ``files`` that cannot be used
        (empty: every one can)."""
        return [self.unreadable[f] for f in files if f in self.unreadable]

    def currencies(self) -> set[str]:
        """The currencies the budget's limits and the playbooks' costs are given in: more than one
        and recovery converts between them with policies/fx.yaml."""
        named = {self.budget.default.currency, *(limit.currency for limit in self.budget.regions.values())}
        return named | {str(p.cost["currency"]) for p in self.playbooks.values() if p.cost and p.cost.get("currency")}

    def playbook_blocking(self, name: str) -> list[str]:
        """Why the playbook ``name`` cannot be used now: its file is there but not valid (empty when it
        is loaded, or when no file of that name exists at all: then it is simply missing)."""
        return [] if name in self.playbooks else self.blocking(f"playbooks/{name}.yaml")

    def compile_policy(self, desired_commit: str | None = None) -> dict[str, Any]:
        """The compiled desired state pushed to every node's ``policy`` control file (SPEC §2.1), its
        :func:`policy_digest` first (a reader finds it on the first line without parsing the rest)."""
        body = {
            "cluster": self.cluster.name,
            "desired_commit": desired_commit,
            "membership": {name: m.status for name, m in self.desired.membership.items()},
            "max_g": self.desired.max_g,
            "suspend": self.desired.suspend,
            "phases": {
                name: {"on_partial": p.on_partial, "sla": p.sla, "resume_playbook": p.resume_playbook}
                for name, p in sorted(self.desired.phases.items())
            },
            "thresholds": self.thresholds.as_dict(),
            "data_schemas": [s.as_dict() for s in self.data_schemas],
            "peers": {name: peer for name, peer in self.peers_policy().items() if peer["transport"] == "ssh"},
            **({"replication": self.replication_policy()} if self.cluster.replication.mode != "off" else {}),
            **({"vclock_pruned": sorted(self.vclock_pruned)} if self.vclock_pruned else {}),
        }
        return {"digest": policy_digest(body), **body}

    def replication_policy(self) -> dict[str, Any]:
        """What a node needs to replicate its WAL: the mode, R, and how to reach every other node."""
        r = self.cluster.replication
        return {"mode": r.mode, "replicas": r.replicas, "peers": self.peers_policy()}

    def peers_policy(self) -> dict[str, dict[str, Any]]:
        """How a node reaches every node of the cluster: over SSH (its agent's gossip, replica links),
        or, for a local node, where its root is on this machine (replica links only: local nodes are
        beaten from the repo, by 'haios node heartbeat')."""
        peers: dict[str, dict[str, Any]] = {}
        for n in self.cluster.nodes:
            if n.transport == "local":
                peers[n.name] = {"transport": "local", "root": str(n.local_root(self.path).resolve())}
            else:
                peers[n.name] = {
                    "transport": "ssh",
                    "address": n.address,
                    "port": n.port,
                    "user": n.user,
                    "root": n.root,
                    **({"host_key": n.host_key} if n.host_key else {}),
                }
        return peers


def policy_digest(policy: Mapping[str, Any]) -> str:
    """SHA-256 of what a node enforces: the canonical JSON of a compiled policy without its digest and
    the commit it was compiled from (a commit that changes nothing a node enforces changes no digest)."""
    body = {k: v for k, v in policy.items() if k not in ("digest", "desired_commit")}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canon.encode()).hexdigest()


# placeholders for a policy file that is not valid (RepoConfig.unreadable): each grants nothing
NO_BUDGET = Budget(Limit("", 0.0), {})
NO_RATES = FxRates("", "1970-01-01", {})
NO_SUPERVISORS = Rbac(0, ())


# -- building from validated documents ----------------------------------------------------------


def _dur(section: dict[str, Any], key: str, default: float) -> float:
    return parse_duration(section[key]) if key in section else default


def build_cluster(v: dict[str, Any]) -> Cluster:
    nodes = tuple(
        NodeSpec(
            name=n["name"],
            transport=n["transport"],
            root=n["root"],
            address=n.get("address"),
            port=n.get("port", 22),
            user=n.get("user", "haios"),
            host_key=n.get("host_key"),
            region=n.get("region"),
        )
        for n in v["nodes"]
    )
    c = v.get("coordination", {})
    etcd = c.get("etcd", {})
    coordination = Coordination(
        backend=c.get("backend", "git"),
        etcd_endpoints=tuple(etcd.get("endpoints", ())),
        etcd_prefix=etcd.get("prefix", "/haios/"),
        etcd_dial_timeout=_dur(etcd, "dial_timeout", 5.0),
        git_remote=c.get("git_remote"),
    )
    r = v.get("replication", {})
    return Cluster(v["name"], nodes, coordination, Replication(r.get("mode", "off"), r.get("replicas", 3)))


# a long CONSTRUCT killed mid-way resumes after its last STEP when its command is resumable (and
# rolls back when it is not); every other phase follows the decision rule
DEFAULT_ON_PARTIAL = {"CONSTRUCT": "resume"}


def build_desired(v: dict[str, Any]) -> DesiredState:
    membership = {name: Member(m["status"], m.get("since")) for name, m in v["membership"].items()}
    phases = {}
    for phase in PHASES:
        p = v.get("phases", {}).get(phase, {})
        phases[phase] = PhasePolicy(
            on_partial=p.get("on_partial", DEFAULT_ON_PARTIAL.get(phase, "auto")),
            sla=parse_duration(p["sla"]) if "sla" in p else None,
            resume_playbook=p.get("resume_playbook"),
            max_resume_attempts=p.get("max_resume_attempts", 2),
            command=tuple(p["command"]) if "command" in p else None,
            timeout=parse_duration(p["timeout"]) if "timeout" in p else 600.0,
            resumable=bool(p.get("resumable", False)),
        )
    return DesiredState(membership, phases, v.get("suspend", False), v.get("max_g"))


def build_thresholds(v: dict[str, Any]) -> Thresholds:
    mode = v.get("runtime_mode", "NORMAL")
    p = v.get("phi", {})
    defaults = Phi(k=RUNTIME_MODE_K[mode])
    priors = dict(defaults.priors)
    priors.update({phase: parse_duration(d) for phase, d in p.get("priors", {}).items()})
    phi = Phi(
        k=float(p.get("k", RUNTIME_MODE_K[mode])),
        window=p.get("window", defaults.window),
        outlier_cap=float(p.get("outlier_cap", defaults.outlier_cap)),
        blend_samples=p.get("blend_samples", defaults.blend_samples),
        prior_sigma_ratio=float(p.get("prior_sigma_ratio", defaults.prior_sigma_ratio)),
        priors=priors,
    )
    hb, pa, rc = v.get("heartbeat", {}), v.get("partition", {}), v.get("recovery", {})
    sel, rp, ck = v.get("sel", {}), v.get("replication", {}), v.get("clocks", {})
    d = Thresholds(runtime_mode=mode, phi=phi)
    return Thresholds(
        runtime_mode=mode,
        phi=phi,
        heartbeat_interval=_dur(hb, "interval", d.heartbeat_interval),
        heartbeat_unhealthy_after=hb.get("unhealthy_after", d.heartbeat_unhealthy_after),
        partition_window=_dur(pa, "window", d.partition_window),
        eviction_ttl=_dur(pa, "eviction_ttl", d.eviction_ttl),
        eviction_grace=_dur(pa, "eviction_grace", d.eviction_grace),
        lease_ttl=_dur(rc, "lease_ttl", d.lease_ttl),
        max_auto_attempts=rc.get("max_auto_attempts", d.max_auto_attempts),
        parallel_traces=rc.get("parallel_traces", d.parallel_traces),
        t_blocked=_dur(rc, "t_blocked", d.t_blocked),
        sel_max_attempts=sel.get("max_attempts", d.sel_max_attempts),
        sel_backoff_base=_dur(sel, "backoff_base", d.sel_backoff_base),
        sel_backoff_cap=_dur(sel, "backoff_cap", d.sel_backoff_cap),
        sel_breaker_failures=sel.get("breaker_failures", d.sel_breaker_failures),
        sel_breaker_open_for=_dur(sel, "breaker_open_for", d.sel_breaker_open_for),
        sticky_window=_dur(rp, "sticky_window", d.sticky_window),
        max_migration_fraction=float(rp.get("max_migration_fraction", d.max_migration_fraction)),
        write_timeout_factor=float(rp.get("write_timeout_factor", d.write_timeout_factor)),
        permit_async_for=_dur(rp, "permit_async_for", d.permit_async_for),
        max_clock_skew=_dur(ck, "max_skew", d.max_clock_skew),
        vclock_retention=_dur(ck, "vclock_retention", d.vclock_retention),
        max_io_overhead_ratio=float(v.get("io", {}).get("max_overhead_ratio", d.max_io_overhead_ratio)),
    )


def build_budget(v: dict[str, Any]) -> Budget:
    def limit(x: dict[str, Any]) -> Limit:
        return Limit(x["currency"], float(x["limit_per_trace"]))

    swing = v.get("swing", {})
    return Budget(
        default=limit(v["default"]),
        regions={name: limit(x) for name, x in v.get("regions", {}).items()},
        swing_limit=swing.get("limit", 3),
        swing_window=_dur(swing, "window", 600.0),
        fx_max_age=_dur(v, "fx_max_age", 4 * 86400.0),
    )


def build_fx(v: dict[str, Any]) -> FxRates:
    return FxRates(v["base"], v.get("date"), {c: float(r) for c, r in v["rates"].items()}, v.get("source", ""))


def build_rbac(v: dict[str, Any]) -> Rbac:
    return Rbac(
        v["policy_version"],
        tuple(
            Supervisor(s["name"], tuple(s["keys"]), s.get("active", True), s.get("valid_after"), s.get("valid_before"))
            for s in v["supervisors"]
        ),
    )


def build_playbook(v: dict[str, Any]) -> Playbook:
    run = v["run"]
    codes = v.get("retryable_exit_codes")
    return Playbook(
        name=v["name"],
        run_command=tuple(run["command"]) if "command" in run else None,
        run_python=run.get("python"),
        compensates=v.get("compensates"),
        resumes=v.get("resumes"),
        description=v.get("description", ""),
        timeout=_dur(v, "timeout", 300.0),
        retryable_exit_codes=tuple(codes) if codes is not None else None,
        non_retryable_exit_codes=tuple(v.get("non_retryable_exit_codes", ())),
        cost={"amount": float(v["cost"]["amount"]), "currency": v["cost"]["currency"]} if "cost" in v else None,
    )


def build_override(file: str, v: dict[str, Any]) -> Override:
    return Override(file, v["payload"], tuple(Signature(s["principal"], s["sig"]) for s in v["signatures"]))
