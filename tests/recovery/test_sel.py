"""The side-effect ledger across simulated cron runs (SPEC §4.4, §4.5): idempotency, back-off,
the circuit breaker, BLOCKED_COMPENSATOR → HARD_FAILED, the cost cap and the swing limit.

Every test drives real reconcile runs against a real simulated cluster; only the reconciler's clock
is moved (``now=``), the way cron runs would be spaced in wall time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import Invoke, at
from helpers.cluster import deletes, git, plant

from haios.config import load_repo
from haios.errors import ParamsMismatch
from haios.ops import reconcile
from haios.recovery.journal import JOURNAL_DIR, Journal, find
from haios.recovery.sel import EXHAUSTED, SUCCEEDED, SelStore, backoff_ceiling, full_jitter
from haios.sim.check import sim_check
from haios.sim.cloud import FakeCloud
from haios.sim.simulator import sim_dir, sim_run

KEY = "key-node-1-0"


def _fail(cluster: Path, times: int) -> None:
    FakeCloud(sim_dir(cluster) / "cloud").set_faults({"fail": {"delete": {"fakecloud.vm": times}}})


def _journal(cluster: Path) -> Journal:
    (path,) = sorted((cluster / JOURNAL_DIR).glob("*.yaml"))
    found = find(cluster, path.stem)
    assert found is not None
    return found


def _store(cluster: Path) -> SelStore:
    return SelStore(cluster, load_repo(cluster).thresholds)


def _delete_calls(cluster: Path) -> int:
    return sum(1 for e in FakeCloud(sim_dir(cluster) / "cloud").ledger() if e["op"] == "delete")


def test_backoff_is_full_jitter_under_a_doubling_cap() -> None:
    assert [backoff_ceiling(n, 2.0, 900.0) for n in (1, 2, 3, 10, 11)] == [2.0, 4.0, 8.0, 900.0, 900.0]
    waits = [full_jitter(f"k{i}", 3, 2.0, 900.0) for i in range(200)]
    assert all(0.0 <= w < 8.0 for w in waits)
    assert max(waits) > 6.0 and min(waits) < 2.0  # spread over the whole interval, not clustered
    assert full_jitter("k1", 3, 2.0, 900.0) == full_jitter("k1", 3, 2.0, 900.0)  # a rerun waits the same


def test_fail_twice_then_succeed_spaced_by_the_schedule(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    _fail(cluster, 2)
    store = _store(cluster)
    t = time.time()
    first = reconcile(cluster, clock=at(t))
    assert first.exit_code() == 2 and "attempt 1 of 5" in first.outcomes[0].note
    entry = store.entry(KEY)
    assert entry is not None and entry.failures == 1 and entry.next_attempt_at is not None
    failed_at = entry.attempts[-1]["at"]
    assert 0.0 <= entry.next_attempt_at - failed_at < backoff_ceiling(1, 2.0, 900.0)
    assert first.next_due == entry.next_attempt_at

    # a run before the back-off is over does not touch the compensator
    calls = _delete_calls(cluster)
    early = reconcile(cluster, clock=at(failed_at + (entry.next_attempt_at - failed_at) / 2 - 1e-3))
    if entry.next_attempt_at - failed_at > 0.01:
        assert early.exit_code() == 2 and "back-off" in early.outcomes[0].note
        assert _delete_calls(cluster) == calls

    second = reconcile(cluster, clock=at(entry.next_attempt_at + 0.001))
    assert second.exit_code() == 2
    entry = store.entry(KEY)
    assert entry is not None and entry.failures == 2
    gap = entry.attempts[1]["at"] - entry.attempts[0]["at"]
    assert gap >= entry.attempts[0]["backoff_s"] - 0.01
    assert 0.0 <= entry.attempts[1]["backoff_s"] < backoff_ceiling(2, 2.0, 900.0)

    third = reconcile(cluster, clock=at(entry.next_attempt_at + 0.001))
    assert third.exit_code() == 0 and third.outcomes[0].after == "CLEAN_EXIT"
    entry = store.entry(KEY)
    assert entry is not None and entry.state == SUCCEEDED and entry.failures == 2
    assert [a["outcome"] for a in entry.attempts] == ["failed", "failed", "ok"]
    assert deletes(cluster) == {KEY: 1}  # exactly one successful compensation in the cloud's ledger
    assert sim_check(cluster) == []
    assert store.breaker("fakecloud-vm").consecutive_failures == 0  # a success closes the breaker


def test_fail_forever_blocks_then_hard_fails_and_releases_the_barrier(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    _fail(cluster, -1)
    store = _store(cluster)
    t0 = now = time.time()
    codes, states = [], []
    for _ in range(40):  # cron runs, each at the time the last one said work is due (bounded)
        result = reconcile(cluster, clock=at(now))
        codes.append(result.exit_code())
        states.append(result.outcomes[0].after)
        if states[-1] == "HARD_FAILED":
            break
        now = max(now + 60.0, result.next_due or 0.0)
    entry = store.entry(KEY)
    assert entry is not None and entry.failures == 5 and entry.state in (EXHAUSTED, "abandoned")
    assert states[-1] == "HARD_FAILED" and codes[-1] == 3
    blocked = states.index("BLOCKED_COMPENSATOR")
    assert codes[blocked] == 3 and codes[:blocked] == [2] * blocked
    j = _journal(cluster)
    assert j.blocked_since is not None
    hard_at = [s for s in j.steps if s["action"] == "rollback"][0]["at"]
    assert hard_at >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(j.blocked_since + 3600))
    assert [a["alert"] for a in j.alerts] == ["sel_compensator_failed", "compensator_timeout"]  # each once
    # the breaker opened after 3 consecutive failures and made later attempts wait 30 min each
    fails = [a["at"] for a in entry.attempts if a["outcome"] == "failed"]
    assert fails[3] - fails[2] >= 1800.0 and fails[4] - fails[3] >= 1800.0
    assert now - t0 >= 2 * 3600  # ~1 h of back-off and two breaker periods, then T_blocked (1 h)
    assert sim_check(cluster) == []  # HARD_FAILED with its alert is allowed
    assert reconcile(cluster, clock=at(now + 60)).exit_code() == 0  # terminal: nothing left to do
    # the barrier is released: the cluster moves on through g=2 and the next g can start
    report = sim_run(cluster, iterations=1, seed=3, faults={})
    assert (report.committed, report.last) == (5, (2, "IDLE"))


def test_open_breaker_uses_no_attempt_and_half_opens_after_30_min(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    _fail(cluster, 3)
    store = _store(cluster)
    now = time.time()
    for _ in range(3):
        now = max(now + 1.0, reconcile(cluster, clock=at(now)).next_due or 0.0)
    breaker = store.breaker("fakecloud-vm")
    assert breaker.opened_at is not None and breaker.consecutive_failures == 3
    entry = store.entry(KEY)
    assert entry is not None and entry.failures == 3
    calls = _delete_calls(cluster)
    for minutes in (1, 10, 29):  # open: runs wait, attempts unchanged, the compensator not called
        result = reconcile(cluster, clock=at(breaker.opened_at + 60 * minutes))
        assert result.exit_code() == 2 and "circuit breaker of fakecloud-vm open until" in result.outcomes[0].note
        assert result.next_due == breaker.opened_at + 1800.0
    assert _delete_calls(cluster) == calls
    entry = store.entry(KEY)
    assert entry is not None and entry.failures == 3
    # 30 min later: one half-open probe, which succeeds (the injected failures are used up)
    result = reconcile(cluster, clock=at(breaker.opened_at + 1800.0))
    assert result.exit_code() == 0 and deletes(cluster) == {KEY: 1}
    assert store.breaker("fakecloud-vm").opened_at is None


def test_half_open_allows_one_probe_per_run(tmp_path: Path, cluster: Path) -> None:
    store = _store(cluster)
    entries = [
        store.register(
            f"k{i}",
            compensator="c",
            kind="fakecloud.vm",
            params={"resource": f"r{i}"},
            node="node-1",
            trace_id="t",
            g=1,
            phase="ANALYZE",
        )
        for i in range(3)
    ]
    for entry in entries:
        store.failed(entry, 100.0, "boom", retryable=True, probe=False, cost=None)
    assert store.breaker("c").opened_at == 100.0
    assert not store.admit(entries[0], 200.0, "run-1").run  # open
    later = 100.0 + 1800.0 + 60.0
    assert store.admit(entries[0], later, "run-2").probe
    assert not store.admit(entries[1], later, "run-2").run  # the same run: the probe is taken
    assert store.admit(entries[1], later + 60, "run-3").probe  # the next run may probe
    # a failed probe opens the breaker for another whole period
    store.failed(entries[1], later + 60, "boom", retryable=True, probe=True, cost=None)
    assert not store.admit(entries[2], later + 120, "run-4").run


def test_non_retryable_failure_blocks_at_once(cluster: Path) -> None:
    (cluster / "playbooks/fakecloud-vm.yaml").write_text(
        "apiVersion: haios/v1\nkind: Playbook\nname: fakecloud-vm\ncompensates: fakecloud.vm\n"
        'run:\n  command: [sh, -c, "echo permission denied >&2; exit 3"]\n'
        "non_retryable_exit_codes: [3]\ntimeout: 10s\n"
    )
    git(cluster, "commit", "-qam", "tests: a compensator that can never succeed")
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    result = reconcile(cluster)
    assert result.exit_code() == 3 and result.outcomes[0].after == "BLOCKED_COMPENSATOR"
    assert "not retryable" in result.outcomes[0].note
    entry = _store(cluster).entry(KEY)
    assert entry is not None and entry.failures == 1 and entry.state == EXHAUSTED
    assert entry.attempts[0]["retryable"] is False and "permission denied" in entry.attempts[0]["error"]
    assert [a["alert"] for a in _journal(cluster).alerts] == ["sel_compensator_failed"]


def test_same_key_with_other_parameters_is_refused(cluster: Path) -> None:
    store = _store(cluster)
    common = {"compensator": "fakecloud-vm", "kind": "fakecloud.vm", "node": "node-1", "g": 2, "phase": "ANALYZE"}
    store.register(KEY, params={"resource": "some-other-vm"}, trace_id="earlier", **common)  # type: ignore[arg-type]
    with pytest.raises(ParamsMismatch, match="other parameters"):
        store.register(KEY, params={"resource": "vm-node-1-0"}, trace_id="later", **common)  # type: ignore[arg-type]
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    result = reconcile(cluster)
    assert result.exit_code() == 3 and result.outcomes[0].after == "BLOCKED_COMPENSATOR"
    assert "other parameters" in result.outcomes[0].note
    assert deletes(cluster) == {}  # never run with parameters the key was not made for


def test_a_stored_success_is_replayed_not_rerun(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    store = _store(cluster)
    entry = store.register(
        KEY,
        compensator="fakecloud-vm",
        kind="fakecloud.vm",
        params={"resource": "vm-node-1-0", "cloud": "../../.sim/cloud"},
        node="node-1",
        trace_id="killed-run",
        g=2,
        phase="ANALYZE",
    )
    store.succeeded(entry, time.time(), {"exit": 0, "stdout": "stored"}, None)  # a run killed right after
    result = reconcile(cluster)
    assert result.exit_code() == 0 and result.outcomes[0].after == "CLEAN_EXIT"
    assert deletes(cluster) == {}  # the stored result was used: the compensator did not run again


def _region(cluster: Path, region: str, currency: str, limit: int) -> None:
    config = cluster / "haios.yaml"
    config.write_text(config.read_text().replace("  - name: node-1\n", f"  - name: node-1\n    region: {region}\n", 1))
    budget = cluster / "policies/budget.yaml"
    budget.write_text(
        budget.read_text().replace(
            "regions: {}", f"regions:\n  {region}:\n    currency: {currency}\n    limit_per_trace: {limit}"
        )
    )
    git(cluster, "commit", "-qam", f"tests: node-1 in {region}")


@pytest.mark.parametrize(("eur", "halted"), [(470, False), (490, True)])
def test_cost_cap_in_a_usd_region_converts_through_fx(cluster: Path, cli: Invoke, eur: int, halted: bool) -> None:
    _region(cluster, "us-east", "USD", 500)  # policies/fx.yaml: 1 EUR = 1.0412 USD
    plant(
        cluster,
        node_1="prepare",
        node_2="prepare",
        node_3="begin",
        effects={"node-1": 1},
        cost={"amount": eur, "currency": "EUR"},
    )
    result = reconcile(cluster)
    (outcome,) = result.outcomes
    if not halted:  # 470 EUR = 489.36 USD: under the limit
        assert result.exit_code() == 0 and outcome.after == "CLEAN_EXIT"
        return
    # 490 EUR = 510.19 USD > 500 USD: automation stops before compensating, with the cost so far
    assert result.exit_code() == 3 and outcome.after == "AWAITING_ACK"
    assert "COST_CAP_EXCEEDED" in outcome.note and "510.19 USD of 500 USD in region us-east" in outcome.note
    assert outcome.cost == [{"region": "us-east", "amount": 510.19, "currency": "USD", "limit": 500.0, "over": True}]
    (alert,) = _journal(cluster).alerts
    assert alert["alert"] == "COST_CAP_EXCEEDED" and alert["cost"][0]["amount"] == 510.19
    assert deletes(cluster) == {}
    # the plan says the same before anything runs, and a second run raises no second alert
    assert reconcile(cluster).exit_code() == 3 and len(_journal(cluster).alerts) == 1
    shown = cli("--repo", cluster, "plan")
    assert shown.exit_code == 3 and "cost so far: 510.19 USD of 500 in us-east" in shown.stdout


def test_compensation_costs_count_against_the_cap(cluster: Path) -> None:
    playbook = cluster / "playbooks/fakecloud-vm.yaml"
    playbook.write_text(playbook.read_text() + "cost: {amount: 300, currency: GBP}\n")  # 360.53 EUR a call
    git(cluster, "commit", "-qam", "tests: a billed compensator")
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 2})
    result = reconcile(cluster)
    (outcome,) = result.outcomes
    # the first compensation (24 EUR + 360.53 EUR) fits; a second would need a new check: 745 EUR > 500
    assert result.exit_code() == 3 and outcome.after == "AWAITING_ACK" and "COST_CAP_EXCEEDED" in outcome.note
    assert deletes(cluster) == {"key-node-1-1": 1}


def test_unknown_currency_in_a_side_effect_is_never_one_to_one(cluster: Path) -> None:
    plant(
        cluster,
        node_1="prepare",
        node_2="prepare",
        node_3="begin",
        effects={"node-1": 1},
        cost={"amount": 1, "currency": "XAU"},
    )
    result = reconcile(cluster)
    assert result.exit_code() == 3 and result.outcomes[0].after == "AWAITING_ACK"
    assert "no exchange rate for XAU" in result.outcomes[0].note
    assert deletes(cluster) == {}


def test_swing_limit_halts_the_fourth_delete_within_10_min(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1}, resource="vm-flappy")
    store = _store(cluster)
    now = time.time()
    for i in range(3):  # three earlier create/delete swings of the same VM, minutes ago
        entry = store.register(
            f"earlier-{i}",
            compensator="fakecloud-vm",
            kind="fakecloud.vm",
            params={"resource": "vm-flappy"},
            node="node-1",
            trace_id=f"t{i}",
            g=1,
            phase="ANALYZE",
        )
        store.succeeded(entry, now - 300 + 60 * i, None, None)
    result = reconcile(cluster, clock=at(now))
    assert result.exit_code() == 3 and result.outcomes[0].after == "AWAITING_ACK"
    assert "created and deleted 3 times within 10 min" in result.outcomes[0].note
    assert _journal(cluster).alerts[0]["alert"] == "COST_CAP_EXCEEDED"
    # eight minutes later all three are more than 10 min old: outside the window
    other = SelStore(cluster, load_repo(cluster).thresholds)
    assert other.deletes_within("fakecloud.vm:vm-flappy", now + 480, 600.0) == 0


def test_flapping_after_two_automatic_rollbacks(cluster: Path) -> None:
    for attempt in range(3):
        plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1} if attempt else None)
        result = reconcile(cluster)
        if attempt < 2:
            assert result.exit_code() == 0 and result.outcomes[0].verdict == "rollback"
    (outcome,) = result.outcomes
    assert result.exit_code() == 3 and outcome.after == "AWAITING_ACK" and "flapping" in outcome.note
    assert outcome.cost and outcome.cost[0]["amount"] == 12.0  # the report shows the cost so far


def test_status_shows_attempts_next_attempt_breaker_and_cost(cluster: Path, cli: Invoke) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    _fail(cluster, 5)
    now = time.time()
    for _ in range(3):  # three failures: the breaker opens
        now = max(now + 1.0, reconcile(cluster, clock=at(now)).next_due or 0.0)
    result = cli("--repo", cluster, "-o", "json", "status")
    assert result.exit_code == 0, result.output
    (trace,) = json.loads(result.stdout)["traces"]
    assert (trace["state"], trace["attempts"], trace["breakers"]) == ("ROLLBACK", 3, {"fakecloud-vm": "open"})
    entry = _store(cluster).entry(KEY)
    assert entry is not None and trace["next_attempt_at"] == entry.next_attempt_at
    assert trace["cost"] == [{"region": "default", "amount": 12.0, "currency": "EUR", "limit": 500.0, "over": False}]
    text = cli("--repo", cluster, "status").stdout
    assert "open recovery traces" in text and "ROLLBACK" in text  # (columns wrap in a narrow terminal)


@pytest.mark.parametrize("errors", [2, 4])
def test_transport_errors_are_retried_within_the_run_only(
    cluster: Path, monkeypatch: pytest.MonkeyPatch, errors: int
) -> None:
    """A node not reached (nothing ran) is retried at once, a few times; past that the run ends with
    an error and the trace waits for the next run — no compensation attempt is used up."""
    from haios.errors import TransportError
    from haios.recovery import compensate
    from haios.transport.local import LocalTransport

    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1})
    real = LocalTransport.run
    calls: list[str] = []

    def flaky(self: LocalTransport, node: str, argv: list[str], **kw: object) -> object:
        calls.append(node)
        if len(calls) <= errors:
            raise TransportError(f"{node}: connection reset (injected)")
        return real(self, node, argv, **kw)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(LocalTransport, "run", flaky)
        m.setattr(compensate, "TRANSIENT_RETRIES", (0.01, 0.01, 0.01))
        result = reconcile(cluster)
    entry = _store(cluster).entry(KEY)
    assert entry is not None and entry.failures == 0
    if errors > 3:
        assert len(calls) == 4 and result.exit_code() == 1
        assert "node-1: connection reset (injected)" in result.outcomes[0].note
        assert deletes(cluster) == {}
        assert reconcile(cluster).exit_code() == 0  # reachable again: the next run does it
    else:
        assert len(calls) == 3 and result.exit_code() == 0
    assert deletes(cluster) == {KEY: 1}


def test_the_third_swing_within_the_window_is_still_automatic(cluster: Path) -> None:
    plant(cluster, node_1="prepare", node_2="prepare", node_3="begin", effects={"node-1": 1}, resource="vm-flappy")
    store = _store(cluster)
    now = time.time()
    for i in range(2):
        common = {"compensator": "fakecloud-vm", "kind": "fakecloud.vm", "node": "node-1", "g": 1, "phase": "ANALYZE"}
        entry = store.register(f"earlier-{i}", params={"resource": "vm-flappy"}, trace_id=f"t{i}", **common)  # type: ignore[arg-type]
        store.succeeded(entry, now - 120, None, None)
    result = reconcile(cluster, clock=at(now))
    assert result.exit_code() == 0 and deletes(cluster) == {KEY: 1}
    assert store.deletes_within("fakecloud.vm:vm-flappy", now + 1, 600.0) == 3  # the next one would halt
