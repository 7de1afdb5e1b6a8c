"""The decision rule of SPEC §4.2, as a pure function (fake clock)."""

from __future__ import annotations

from typing import Any

from haios.config.model import PhasePolicy
from haios.recovery.machine import Event
from haios.recovery.planner import Inputs, View, decide, steps_for

NOW = 1_000.0


def _views(**statuses: str | tuple[str, dict[str, Any]]) -> dict[str, View]:
    out = {}
    for name, spec in statuses.items():
        status, extra = (spec, {}) if isinstance(spec, str) else spec
        out[name] = View(name, status, begin_ts=extra.pop("begin_ts", NOW - 100), **extra)
    return out


def _effect(key: str, *, returned: bool = True, compensated: bool = False) -> dict[str, Any]:
    return {
        "key": key,
        "kind": "fakecloud.vm",
        "params": {"resource": key},
        "compensator": "fakecloud-vm",
        "cost": {"amount": 1, "currency": "EUR"},
        "returned": returned,
        "compensated": compensated,
    }


def test_decide_all_committed_is_nothing() -> None:
    d = decide(_views(a="committed", b="committed"), Inputs(now=NOW))
    assert (d.verdict, d.event) == ("nothing", None)


def test_decide_prepared_rest_rolls_forward() -> None:
    d = decide(_views(a="committed", b="prepared"), Inputs(now=NOW))
    assert (d.verdict, d.event) == ("forward", Event.ROLL_FORWARD)
    steps = steps_for(d, _views(a="committed", b="prepared"))
    assert [(s["node"], s["action"]) for s in steps] == [("b", "forward")]


def test_decide_all_prepared_none_committed_rolls_forward_without_waiting() -> None:
    d = decide(_views(a="prepared", b="prepared"), Inputs(now=NOW, timeout=10_000))
    assert d.verdict == "forward"


def test_decide_missing_prepare_waits_for_the_phi_timeout() -> None:
    views = _views(a="prepared", b=("begun", {"begin_ts": NOW - 5}))
    d = decide(views, Inputs(now=NOW, timeout=30))
    assert (d.verdict, d.wait_until) == ("wait", NOW + 25)
    d = decide(views, Inputs(now=NOW + 26, timeout=30))
    assert (d.verdict, d.event) == ("rollback", Event.ROLL_BACK)


def test_decide_rollback_compensates_in_reverse_then_restores() -> None:
    views = _views(
        a=("prepared", {"side_effects": (_effect("k1"), _effect("k2", returned=False))}),
        b="begun",
        c="absent",
    )
    d = decide(views, Inputs(now=NOW, timeout=1))
    steps = steps_for(d, views)
    assert [(s["node"], s["action"], s.get("key")) for s in steps] == [
        ("a", "compensate", "k2"),  # reverse order; its outcome is unknown, it is compensated too
        ("a", "compensate", "k1"),
        ("a", "rollback", None),
        ("b", "rollback", None),
    ]
    assert "(outcome unknown)" in steps[0]["detail"]


def test_decide_committed_and_unprepared_needs_a_human() -> None:
    d = decide(_views(a="committed", b="begun"), Inputs(now=NOW, timeout=1))
    assert (d.verdict, d.event) == ("needs_human", Event.NEEDS_HUMAN)
    assert "cannot be made atomic" in d.reason


def test_decide_partition_blocks_never_fails() -> None:
    d = decide(_views(a="prepared", b="partitioned", c="unreachable"), Inputs(now=NOW))
    assert (d.verdict, d.event) == ("blocked", Event.PARTITIONED)
    assert "b PARTITIONED" in d.reason and "c unreachable" in d.reason


def test_decide_corrupt_wal_is_never_guessed() -> None:
    d = decide(_views(a="committed", b="corrupt"), Inputs(now=NOW))
    assert d.verdict == "needs_human" and "corrupt mid-log" in d.reason


def test_decide_hold_policy_waits_for_an_override() -> None:
    d = decide(_views(a="prepared", b="begun"), Inputs(PhasePolicy(on_partial="hold"), timeout=1, now=NOW))
    assert d.verdict == "needs_human" and "hold" in d.reason


def test_decide_rollback_policy_does_not_roll_forward_a_prepared_phase() -> None:
    d = decide(_views(a="prepared", b="prepared"), Inputs(PhasePolicy(on_partial="rollback"), now=NOW))
    assert d.verdict == "rollback"
    # but once a participant committed, forward is the only atomic way
    d = decide(_views(a="committed", b="prepared"), Inputs(PhasePolicy(on_partial="rollback"), now=NOW))
    assert d.verdict == "forward"


def test_decide_resume_policy_runs_the_hook_within_its_attempts() -> None:
    policy = PhasePolicy(on_partial="resume", resume_playbook="resume-construct", max_resume_attempts=2)
    views = _views(a="prepared", b="begun")
    d = decide(views, Inputs(policy, timeout=1, now=NOW, resume_attempts=1))
    assert (d.verdict, d.event) == ("resume", Event.RESUME)
    assert [
        (s["node"], s["action"], s["playbook"]) for s in steps_for(d, views, resume_playbook="resume-construct")
    ] == [("b", "resume", "resume-construct")]
    d = decide(views, Inputs(policy, timeout=1, now=NOW, resume_attempts=2))
    assert d.verdict == "rollback"  # attempts used up: fall back to rollback


def test_decide_flapping_after_two_automatic_rollbacks() -> None:
    views = _views(a="prepared", b="begun")
    assert decide(views, Inputs(timeout=1, now=NOW, rollbacks_so_far=1)).verdict == "rollback"
    d = decide(views, Inputs(timeout=1, now=NOW, rollbacks_so_far=2))
    assert d.verdict == "needs_human" and "flapping" in d.reason


def test_decide_aborted_phase_with_owed_side_effects_is_compensated() -> None:
    views = _views(a=("aborted", {"side_effects": (_effect("k1"), _effect("k2", compensated=True))}), b="aborted")
    d = decide(views, Inputs(now=NOW))
    assert d.verdict == "rollback" and "k1" in d.reason and "k2" not in d.reason
    assert [(s["node"], s["action"], s.get("key")) for s in steps_for(d, views)] == [("a", "compensate", "k1")]


def test_decide_torn_tail_alone_is_repaired() -> None:
    views = {"a": View("a", "committed", torn=True), "b": View("b", "committed")}
    d = decide(views, Inputs(now=NOW))
    assert d.verdict == "forward"
    assert [(s["node"], s["action"]) for s in steps_for(d, views)] == [("a", "repair")]
