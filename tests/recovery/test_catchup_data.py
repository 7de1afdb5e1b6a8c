"""A rejoining node catches up data, not only positions: the transitions it missed are replayed on it
from a peer's WAL, verified against their hashes — or it is not marked caught up and is told what
is missing."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import yaml
from helpers import Invoke
from helpers.cluster import positions

from haios.config import load_repo
from haios.node import Node, init_node_root, manifest
from haios.node.catchup import CATCH_UP_STEP, committed_transitions, verify_transition
from haios.node.runner import run_phase
from haios.wal import read_records


def _files(root: Path) -> dict[str, bytes]:
    data = root / "data"
    return {p.relative_to(data).as_posix(): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def _reprovision(cluster: Path, node: str) -> Path:
    root = cluster / "nodes" / node
    shutil.rmtree(root)
    assert init_node_root(root, node, load_repo(cluster).compile_policy())
    return root


def _commit(cluster: Path, node: str, *, legacy: bool, content: bytes = b"x") -> None:
    """Commit g=2 ANALYZE on ``node``: as an older haios's catch-up did (a sentence, no intents), or
    as a phase that writes ``analyze/extra.conf``."""
    with Node(cluster / "nodes" / node).begin(2, "ANALYZE", participants=[node], trace_id=f"t-{node}") as tx:
        if legacy:
            tx.step(CATCH_UP_STEP, "caught up after eviction")
        else:
            tx.intent("analyze/extra.conf", content)
        tx.prepare()
        tx.commit()


def test_a_re_provisioned_node_gets_its_peers_data_back(cluster: Path, cli: Invoke) -> None:
    donor = _files(cluster / "nodes/node-1")
    assert donor  # the fixture's iteration wrote files
    root = _reprovision(cluster, "node-3")
    assert _files(root) == {}
    result = cli("--repo", cluster, "-o", "json", "node", "rejoin", "node-3")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["rejoined"] and answer["missing"] == [] and len(answer["caught_up"]) == 5
    # byte for byte what node-1 (the first peer by name) committed, through the node's own manifest
    assert _files(root) == donor
    assert positions(cluster)["node-3"] == (1, "IDLE")
    steps = [r.payload["outcome"] for r in read_records(root / "wal") if r.payload.get("name") == CATCH_UP_STEP]
    assert len(steps) == 5 and {s["from"] for s in steps} == {"node-1"}
    assert sum(s["files"] for s in steps) == sum(
        len(t["intents"]) for t in committed_transitions(root, (0, None), (1, "IDLE"))
    )
    doctor = json.loads(cli("--repo", cluster, "-o", "json", "doctor").stdout)
    assert not [f for f in doctor["findings"] if f["kind"] == "node_behind"]
    assert manifest.check(root) == []  # every file holds the bytes its manifest entry names


def test_a_transition_no_peer_can_serve_stops_the_catch_up_and_says_what_is_missing(cluster: Path, cli: Invoke) -> None:
    for node in ("node-1", "node-2"):  # both committed g=2 ANALYZE by an older catch-up: no data
        _commit(cluster, node, legacy=True)
    _reprovision(cluster, "node-3")
    result = cli("--repo", cluster, "-o", "json", "node", "rejoin", "node-3")
    assert result.exit_code == 3, result.output
    answer = json.loads(result.stdout)
    assert not answer["rejoined"] and len(answer["caught_up"]) == 5  # up to g=1 IDLE, with data
    assert answer["missing"] == [
        {
            "g": 2,
            "phase": "ANALYZE",
            "peers": {
                "node-1": "it committed the transition by a catch-up that carried no data (an older haios)",
                "node-2": "it committed the transition by a catch-up that carried no data (an older haios)",
            },
        }
    ]
    assert positions(cluster)["node-3"] == (1, "IDLE")  # not past what it could not get
    text = cli("--repo", cluster, "node", "rejoin", "node-3")  # again: nothing to redo, the same verdict
    assert text.exit_code == 3
    assert "node-3 not rejoined yet: caught up 0 transitions, then stopped: no healthy peer holds" in text.stdout
    assert "1 transition still missing, so node-3 is not caught up" in text.stdout


def test_the_first_peer_whose_copy_verifies_serves_each_transition(cluster: Path, cli: Invoke) -> None:
    _commit(cluster, "node-1", legacy=True)
    _commit(cluster, "node-2", legacy=False, content=b"from node-2\n")
    root = _reprovision(cluster, "node-3")
    result = cli("--repo", cluster, "-o", "json", "node", "rejoin", "node-3")
    assert result.exit_code == 0, result.output
    assert (root / "data/analyze/extra.conf").read_bytes() == b"from node-2\n"
    sources = {
        (r.payload["g"], r.payload["phase"]): r.payload["outcome"]["from"]
        for r in read_records(root / "wal")
        if r.payload.get("name") == CATCH_UP_STEP
    }
    assert sources[(2, "ANALYZE")] == "node-2" and sources[(1, "ANALYZE")] == "node-1"
    assert positions(cluster) == {n: (2, "ANALYZE") for n in ("node-1", "node-2", "node-3")}


def test_the_node_refuses_a_source_whose_bytes_do_not_match(cluster: Path, cli: Invoke) -> None:
    (transition,) = committed_transitions(cluster / "nodes/node-1", (0, None), (1, "ANALYZE"))
    assert verify_transition(transition, 1, "ANALYZE") is None
    forged = json.loads(json.dumps(transition))
    forged["intents"][0]["content_b64"] = base64.b64encode(b"not what was committed\n").decode()
    assert "do not hash to the intent's sha256" in (verify_transition(forged, 1, "ANALYZE") or "")
    root = _reprovision(cluster, "node-3")
    wal_before = sorted(p.read_bytes() for p in (root / "wal").iterdir())
    request = {
        "op": "catchup",
        "trace_id": "rejoin-node-3-x",
        "token": 1,
        "g": 1,
        "phase": "ANALYZE",
        "note": "caught up",
        "source": {**forged, "node": "node-1"},
    }
    result = cli("node", "recover", root, "--request", json.dumps(request))
    assert result.exit_code == 5
    assert "the catch-up source of g=1 ANALYZE from node-1 fails its check: data/" in result.output
    assert sorted(p.read_bytes() for p in (root / "wal").iterdir()) == wal_before and _files(root) == {}
    digest_off = {**transition, "node": "node-1", "digest": "0" * 64}
    result = cli("node", "recover", root, "--request", json.dumps({**request, "source": digest_off}))
    assert result.exit_code == 5 and "do not match the PREPARE digest" in result.output
    answer = cli(
        "node", "recover", root, "--request", json.dumps({"op": "committed", "after": [0, None], "until": "x"})
    )
    assert answer.exit_code == 1 and "takes after and until as [g, phase]" in answer.output


def test_an_attempt_the_others_committed_without_it_is_rolled_back_on_it_alone(cluster: Path, cli: Invoke) -> None:
    """A member killed mid-phase: the coordinator aborted the attempt on the others and committed the
    transition with them alone. Its own attempt is rolled back on it (not a human's decision), and
    rejoin then catches it up with what the others committed."""
    roots = {n: cluster / "nodes" / n for n in ("node-1", "node-2", "node-3")}
    everyone = list(roots)
    for n in ("node-1", "node-2"):
        assert run_phase(roots[n], 2, "ANALYZE", [], participants=everyone, trace_id="first").outcome == "prepared"
        Node(roots[n]).resume(2, "ANALYZE").abort("participant(s) node-3 did not prepare")
    Node(roots["node-3"]).begin(2, "ANALYZE", participants=everyone, trace_id="first").close()  # then it died
    for n in ("node-1", "node-2"):
        with Node(roots[n]).begin(2, "ANALYZE", participants=["node-1", "node-2"], trace_id="second") as tx:
            tx.intent("analyze/extra.conf", b"committed without node-3\n")
            tx.prepare()
            tx.commit()

    result = cli("--repo", cluster, "-o", "json", "reconcile")
    assert result.exit_code == 0, result.output
    (trace,) = json.loads(result.stdout)["traces"]
    assert (trace["verdict"], trace["after"]) == ("rollback", "CLEAN_EXIT")
    journal = yaml.safe_load((cluster / "status/recoveries" / f"{trace['trace_id']}.yaml").read_text())
    assert journal["reason"] == (
        "(g=2, ANALYZE) was committed without node-3 by node-1, node-2: the attempt it began was aborted by the others"
    )
    assert positions(cluster)["node-3"] == (1, "IDLE") and Node(roots["node-3"]).open_phase() is None

    rejoined = cli("--repo", cluster, "node", "rejoin", "node-3")
    assert rejoined.exit_code == 0, rejoined.output
    assert positions(cluster) == {n: (2, "ANALYZE") for n in everyone}
    assert (roots["node-3"] / "data/analyze/extra.conf").read_bytes() == b"committed without node-3\n"


def test_a_left_out_attempt_already_aborted_needs_no_trace_only_a_rejoin(cluster: Path, cli: Invoke) -> None:
    roots = {n: cluster / "nodes" / n for n in ("node-1", "node-2", "node-3")}
    everyone = list(roots)
    for n in everyone:
        Node(roots[n]).begin(2, "ANALYZE", participants=everyone, trace_id="first").close()
        Node(roots[n]).resume(2, "ANALYZE").abort("participant(s) node-3 did not prepare")  # node-3's own, on restart
    for n in ("node-1", "node-2"):
        assert run_phase(roots[n], 2, "ANALYZE", [], participants=["node-1", "node-2"], commit=True).outcome
    plan = json.loads(cli("--repo", cluster, "-o", "json", "plan").stdout)
    assert plan["traces"] == [] and plan["exit_code"] == 0  # nothing for reconcile: node-3 is just behind
    doctor = json.loads(cli("--repo", cluster, "-o", "json", "doctor").stdout)
    (left,) = [f for f in doctor["findings"] if f["kind"] == "left_out"]
    assert left["nodes"] == ["node-3"] and left["severity"] == "warning"
    assert left["fix"].startswith(f"haios --repo {cluster} node rejoin node-3")
    assert not [f for f in doctor["findings"] if f["kind"] == "partial_commit"]  # behind, not half done
    assert {n["node"]: n["health"] for n in doctor["nodes"]}["node-3"] == "BEHIND"
    assert cli("--repo", cluster, "node", "rejoin", "node-3").exit_code == 0
    assert positions(cluster) == {n: (2, "ANALYZE") for n in everyone}
