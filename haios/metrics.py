"""Prometheus metrics (SPEC §9), computed from what the desired-state repo remembers.

Everything comes from ``status/``: the trace journals (detection times, every recovery step with
where its time went, results, cost), ``status/membership.yaml`` (ended partitions, evictions) and
this machine's run record ``status/observed/runs.json`` (reconcile durations and results; local,
never committed). So the same numbers come out of a cron job's textfile, a push to a Pushgateway
and a long-running exporter, and each scrape reads them afresh.

Library code never touches prometheus_client's global registry: :func:`register` adds haios's
collector to the registry it is given.

Histograms are rebuilt from the journals on every scrape; journals are kept in git and never
deleted, so their counts only grow, as Prometheus expects of a histogram. Each bucket carries, as
an OpenMetrics exemplar, the trace id of the latest observation that fell into it.
"""

from __future__ import annotations

import json
import logging
import math
import socket
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder, delete_from_gateway, generate_latest, push_to_gateway
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from . import __version__
from .config import load_repo
from .errors import ConfigError, HaiosError, MetricsError
from .fsutil import atomic_write, makedirs_durable
from .layout import JOURNAL_DIR, PLACEMENT_FILE, RUNS_FILE
from .layout import OBSERVED_DIR as CACHE_DIR
from .node.timing import STEPS
from .recovery import journal as journals
from .recovery import membership as members
from .recovery.machine import TERMINAL, State
from .replication.placement import load as load_placement
from .timefmt import parse_utc
from .untrusted import is_number, read_json

# phases and recoveries take from a fraction of a second (a simulator) to hours (a real CONSTRUCT)
PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)
# one recovery step: an fsync, a snapshot restore, a compensator (an API call, a playbook)
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RECOVERY_RESULTS = ("roll_forward", "rollback", "resolved", "hard_failed", "aborted")
JOB = "haios"  # the Pushgateway job
RUN_RESULTS = {0: "converged", 1: "error", 2: "pending", 3: "blocked", 4: "locked", 5: "refused"}


@dataclass
class _Histogram:
    """Observations for one label set, turned into cumulative buckets with exemplars."""

    bounds: tuple[float, ...]
    values: list[tuple[float, str, float]] = field(default_factory=list)  # (value, trace id, when)

    def observe(self, value: float, trace_id: str, when: float) -> None:
        self.values.append((max(0.0, value), trace_id, when))

    def buckets(self) -> tuple[list[tuple[str, float] | tuple[str, float, Exemplar]], float]:
        out: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        ordered = sorted(self.values, key=lambda v: v[2])
        lower = -math.inf
        for bound in (*self.bounds, math.inf):
            count = sum(1 for v, _, _ in ordered if v <= bound)
            inside = [v for v in ordered if lower < v[0] <= bound]
            le = "+Inf" if bound == math.inf else _float(bound)
            if inside:
                value, trace_id, when = inside[-1]
                out.append((le, float(count), Exemplar({"trace_id": trace_id}, value, when)))
            else:
                out.append((le, float(count)))
            lower = bound
        return out, sum(v for v, _, _ in ordered)


def _float(x: float) -> str:
    return repr(float(x))


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_utc(text)
    except ValueError:
        return None


def _result(j: journals.Journal) -> str | None:
    state = State(j.state)
    if state not in TERMINAL:
        return None
    if state is State.HARD_FAILED:
        return "hard_failed"
    if state is State.ABORTED:
        return "aborted"
    if j.decision == "forward":
        return "roll_forward"
    if j.decision == "rollback":
        return "rollback"
    return "resolved"  # settled without a step of ours (a run killed after its last node step)


def load_runs(repo: Path) -> dict[str, Any]:
    try:
        data = read_json(repo / RUNS_FILE, "status", within=(repo / RUNS_FILE).parent)
    except HaiosError:
        return {}
    return data if isinstance(data, dict) else {}


def record_run(repo: Path, *, code: int, seconds: float, finished: float) -> None:
    """Add one reconcile run to this machine's run record (exit code, duration, when)."""
    runs = load_runs(repo)
    totals: dict[str, int] = dict(runs.get("totals") or {})
    result = RUN_RESULTS.get(code, "error")
    totals[result] = int(totals.get(result, 0)) + 1
    hist = runs.get("duration") or {"buckets": [0] * (len(RUN_BUCKETS) + 1), "sum": 0.0, "count": 0}
    for i, bound in enumerate((*RUN_BUCKETS, math.inf)):
        if seconds <= bound:
            hist["buckets"][i] += 1
    hist["sum"] = float(hist["sum"]) + seconds
    hist["count"] = int(hist["count"]) + 1
    runs.update(totals=totals, duration=hist, last_run=finished, last_result=result)
    if result in ("converged", "pending"):
        runs["last_success"] = finished
    path = repo / RUNS_FILE
    makedirs_durable(path.parent)
    atomic_write(path, (json.dumps(runs, sort_keys=True) + "\n").encode())


class HaiosCollector(Collector):
    """Every series of SPEC §9 for the desired-state repo at ``repo``, read afresh on each collect."""

    def __init__(self, repo: Path, cluster: str) -> None:
        self.repo = repo
        self.cluster = cluster

    def _journals(self) -> list[journals.Journal]:
        directory = self.repo / JOURNAL_DIR
        if not directory.is_dir():
            return []
        found = []
        for path in sorted(directory.glob("*.yaml")):
            try:
                found.append(journals.load(path))
            except ConfigError:
                continue  # an unreadable journal is doctor's to report, not a reason to lose every metric
        return found

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("haios_info", "The cluster these metrics are about.", labels=["cluster", "version"])
        info.add_metric([self.cluster, __version__], 1)
        yield info
        traces = self._journals()
        yield from self._detection(traces)
        yield from self._recovery_steps(traces)
        yield from self._results(traces)
        yield from self._membership()
        yield from self._runs()
        yield from self._budget(traces)
        yield from self._io()

    def _detection(self, traces: Iterable[journals.Journal]) -> Iterator[Metric]:
        per_phase: dict[str, _Histogram] = defaultdict(lambda: _Histogram(PHASE_BUCKETS))
        for j in traces:
            d = j.detection or {}
            if d.get("last_activity") is None or d.get("detected_at") is None:
                continue
            detected = float(d["detected_at"])
            per_phase[j.phase].observe(detected - float(d["last_activity"]), j.trace_id, detected)
        family = HistogramMetricFamily(
            "phase_detect_latency_seconds",
            "Time from a transition's last sign of life to the reconcile that opened its recovery trace.",
            labels=["phase"],
        )
        for phase in sorted(per_phase):
            buckets, total = per_phase[phase].buckets()
            family.add_metric([phase], buckets, total)
        yield family

    def _recovery_steps(self, traces: Iterable[journals.Journal]) -> Iterator[Metric]:
        per: dict[tuple[str, str], _Histogram] = defaultdict(lambda: _Histogram(STEP_BUCKETS))
        for j in traces:
            for s in j.steps:
                when = _ts(s.get("at")) or 0.0
                for step, seconds in (s.get("timings") or {}).items():
                    if step in STEPS:
                        per[(j.phase, step)].observe(float(seconds), j.trace_id, when)
        family = HistogramMetricFamily(
            "phase_recovery_latency_seconds",
            "Time spent in each kind of recovery step: WAL fsyncs, RECOVERY checkpoint flushes, "
            "compensators, vector-clock merges, snapshot restores.",
            labels=["phase", "step"],
        )
        for phase, step in sorted(per):
            buckets, total = per[(phase, step)].buckets()
            family.add_metric([phase, step], buckets, total)
        yield family

    def _results(self, traces: list[journals.Journal]) -> Iterator[Metric]:
        counts = dict.fromkeys(RECOVERY_RESULTS, 0)
        open_states: dict[str, int] = defaultdict(int)
        for j in traces:
            result = _result(j)
            if result is not None:
                counts[result] += 1
            else:
                open_states[j.state] += 1
        family = CounterMetricFamily("phase_recoveries", "Recovery traces ended, by how they ended.", labels=["result"])
        for result in RECOVERY_RESULTS:
            family.add_metric([result], counts[result])
        yield family
        gauge = GaugeMetricFamily("haios_open_traces", "Recovery traces not ended yet, by state.", labels=["state"])
        for state in State:
            if state not in TERMINAL:
                gauge.add_metric([state.value], open_states.get(state.value, 0))
        yield gauge

    def _membership(self) -> Iterator[Metric]:
        try:
            m = members.load(self.repo)
        except ConfigError:
            m = members.Membership()
        hist = _Histogram(PHASE_BUCKETS)
        for p in m.partitions:
            hist.observe(float(p["seconds"]), f"partition-{p['node']}", float(p["healed_at"]))
        family = HistogramMetricFamily(
            "partition_duration_seconds",
            "How long each isolation of a member (unreachable or PARTITIONED) lasted, observed when it healed.",
        )
        buckets, total = hist.buckets()
        family.add_metric([], buckets, total)
        yield family
        yield CounterMetricFamily(
            "minority_evictions",
            "Isolated members evicted while the healthy ones were still a majority.",
            value=m.minority_evictions_total,
        )
        yield GaugeMetricFamily("haios_evicted_nodes", "Members evicted and not rejoined yet.", value=len(m.evicted))

    def _runs(self) -> Iterator[Metric]:
        runs = load_runs(self.repo)
        hist = runs.get("duration") or {"buckets": [0] * (len(RUN_BUCKETS) + 1), "sum": 0.0, "count": 0}
        family = HistogramMetricFamily(
            "haios_reconcile_duration_seconds", "Wall time of each reconcile run on this machine."
        )
        cumulative = [
            ("+Inf" if bound == math.inf else _float(bound), float(count))
            for bound, count in zip((*RUN_BUCKETS, math.inf), hist["buckets"], strict=True)
        ]
        family.add_metric([], cumulative, float(hist["sum"]))
        yield family
        totals = runs.get("totals") or {}
        counter = CounterMetricFamily(
            "haios_reconcile", "Reconcile runs on this machine, by result (their exit code).", labels=["result"]
        )
        for result in RUN_RESULTS.values():
            counter.add_metric([result], int(totals.get(result, 0)))
        yield counter
        if runs.get("last_success") is not None:
            yield GaugeMetricFamily(
                "haios_last_success_timestamp_seconds",
                "When a reconcile run on this machine last finished without error (exit 0 or 2).",
                value=float(runs["last_success"]),
            )

    def _budget(self, traces: Iterable[journals.Journal]) -> Iterator[Metric]:
        spent: dict[tuple[str, str], float] = defaultdict(float)
        for j in traces:
            for c in j.cost:
                spent[(str(c["region"]), str(c["currency"]))] += float(c["amount"])
        family = GaugeMetricFamily(
            "haios_budget_spent",
            "Cost of recovery so far (side effects and compensations of every trace), per region and currency.",
            labels=["region", "currency"],
        )
        for (region, currency), amount in sorted(spent.items()):
            family.add_metric([region, currency], amount)
        yield family

    def _io(self) -> Iterator[Metric]:
        """Bytes per node (:func:`node_io`), and the write overhead: local (WAL + snapshots per data
        byte, the budget's measure) and with the replicas beside it."""
        counters = CounterMetricFamily(
            "haios_io_bytes",
            "Bytes written for a node: its WAL, its WAL's replicas on its peers, its snapshots, and the data "
            "its phases wrote to data/.",
            labels=["node", "kind"],
        )
        nodes = node_io(self.repo)
        for n in nodes:
            for kind, amount in (("wal", n.wal), ("replica", n.replica), ("snapshot", n.snapshot), ("data", n.data)):
                counters.add_metric([n.node, kind], amount)
        yield counters
        local = [n.local_ratio for n in nodes if n.local_ratio is not None]
        if local:
            yield GaugeMetricFamily(
                "max_io_overhead_ratio",
                "The largest, over the nodes, of (WAL + snapshot bytes) / data bytes the phases wrote: the "
                "local write overhead (budget: thresholds io.max_overhead_ratio, 2.2).",
                value=max(local),
            )
        replicated = [n.replicated_ratio for n in nodes if n.replicated_ratio is not None]
        if replicated and any(n.replica for n in nodes):
            yield GaugeMetricFamily(
                "max_io_overhead_ratio_replicated",
                "The largest, over the nodes, of (WAL + replica + snapshot bytes) / data bytes: what the "
                "cluster writes for a node's data with its WAL's copies (R copies cost at least R x).",
                value=max(replicated),
            )


@dataclass(frozen=True)
class NodeIo:
    """What was written for one node, in bytes, from its observation cache."""

    node: str
    wal: float
    replica: float  # the copies of its WAL on its replica peers
    snapshot: float
    data: float  # what its phases wrote to data/

    @property
    def local_ratio(self) -> float | None:
        """(WAL + snapshots) / data: the node's own write overhead (None: no data written yet)."""
        return (self.wal + self.snapshot) / self.data if self.data else None

    @property
    def replicated_ratio(self) -> float | None:
        """(WAL + replicas + snapshots) / data: with the copies its peers write."""
        return (self.wal + self.replica + self.snapshot) / self.data if self.data else None


def node_io(repo: Path, known: Mapping[str, Mapping[str, int]] | None = None) -> list[NodeIo]:
    """Bytes per node from the observation cache (status/observed/<node>.json), which reads every
    WAL byte once: the WAL itself, the snapshots BEGIN_PHASE reports, the data PREPARE reports; with
    WAL replication, the copies of the WAL its peers write (status/replication.yaml says how many:
    replicas are byte-for-byte copies). A cache that cannot be read is left out. ``known``: the
    counters of the nodes a pass just observed (what their caches hold), not read again."""
    copies = _replica_copies(repo)
    out = []
    for path in sorted((repo / CACHE_DIR).glob("*.json")):
        io: object = (known or {}).get(path.stem)
        if io is None:
            try:
                cache = read_json(path, "status", within=path.parent)
            except HaiosError:
                continue
            io = cache.get("io") if isinstance(cache, dict) else None
        if not isinstance(io, dict) or not all(
            is_number(io.get(k) or 0) for k in ("wal_bytes", "snapshot_bytes", "data_bytes")
        ):
            continue  # not a node's cache (the run record, doctor's memory), or not numbers
        wal = float(io.get("wal_bytes") or 0)
        out.append(
            NodeIo(
                path.stem,
                wal,
                wal * copies.get(path.stem, 0),
                float(io.get("snapshot_bytes") or 0),
                float(io.get("data_bytes") or 0),
            )
        )
    return out


def _replica_copies(repo: Path) -> dict[str, int]:
    """How many peers hold a copy of each node's WAL (none without replication)."""
    if not (repo / PLACEMENT_FILE).exists():
        return {}
    try:
        stored = load_placement(repo)
    except HaiosError:
        return {}
    return {origin: len(peers) for origin, peers in stored.placement.streams.items()} if stored else {}


def register(registry: CollectorRegistry, repo: Path | str, cluster: str) -> HaiosCollector:
    """Add haios's collector for the repo to ``registry`` (never the global default)."""
    collector = HaiosCollector(Path(repo), cluster)
    registry.register(collector)
    return collector


def exposition(registry: CollectorRegistry, *, openmetrics: bool = False) -> bytes:
    """The registry in Prometheus text format (what node_exporter's textfile collector reads), or
    OpenMetrics (with the trace-id exemplars)."""
    if openmetrics:
        text: bytes = generate_openmetrics(registry)  # type: ignore[no-untyped-call]
        return text
    return generate_latest(registry)


def write_textfile(registry: CollectorRegistry, path: Path | str) -> None:
    """Atomically replace ``path`` (node_exporter reads ``*.prom`` files whole, any time)."""
    atomic_write(Path(path), exposition(registry))


def grouping_key(cluster: str, instance: str | None = None) -> dict[str, str]:
    """The Pushgateway group of this reconciler: its cluster and its instance (default: host name)."""
    return {"cluster": cluster, "instance": instance or socket.gethostname()}


def push(registry: CollectorRegistry, gateway: str, cluster: str, *, instance: str | None = None) -> None:
    """Replace this reconciler's group on the Pushgateway (job ``haios``) with the registry's metrics."""
    try:
        push_to_gateway(gateway, JOB, registry, grouping_key=grouping_key(cluster, instance), timeout=10)
    except (OSError, ValueError) as exc:  # URLError is an OSError; a malformed URL a ValueError
        raise MetricsError(f"{gateway}: could not push the metrics ({_why(exc)})") from exc


def delete(gateway: str, cluster: str, *, instance: str | None = None) -> None:
    """Remove this reconciler's group from the Pushgateway (a reconciler taken out of service)."""
    try:
        delete_from_gateway(gateway, JOB, grouping_key=grouping_key(cluster, instance), timeout=10)
    except (OSError, ValueError) as exc:
        raise MetricsError(f"{gateway}: could not delete the metrics ({_why(exc)})") from exc


def _why(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    return " ".join(str(reason if reason is not None else exc).split()) or type(exc).__name__


class _Handler(BaseHTTPRequestHandler):
    """``/metrics`` (text or OpenMetrics, as the scraper asks) and ``/healthz``."""

    repo: Path
    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            try:
                body, status = encoder(self.registry), 200
            except Exception as exc:  # noqa: BLE001 - a scrape error is answered, never a dead exporter
                body, status, content_type = f"collecting failed: {exc}\n".encode(), 500, "text/plain"
        elif path == "/healthz":
            status, text = self._health()
            body, content_type = text.encode(), "text/plain; charset=utf-8"
        else:
            body, status, content_type = b"haios exporter: /metrics, /healthz\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _health(self) -> tuple[int, str]:
        try:
            load_repo(self.repo, overrides=False)
        except ConfigError as exc:
            return 503, f"unhealthy: {exc.one_line()}\n"
        return 200, "ok\n"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        logging.getLogger("haios.metrics").debug("%s " + format, self.address_string(), *args)


def exporter(repo: Path | str, registry: CollectorRegistry, address: str, port: int) -> ThreadingHTTPServer:
    """An HTTP server for ``haios metrics serve`` (bound, not yet serving: call ``serve_forever``)."""
    handler = type("HaiosMetricsHandler", (_Handler,), {"repo": Path(repo), "registry": registry})
    try:
        return ThreadingHTTPServer((address, port), handler)
    except OSError as exc:
        raise MetricsError(f"{address}:{port}: cannot listen ({_why(exc)})", hint="choose another --port") from exc
