"""fan_out: one piece of work per node, remote nodes several at once, a node's failure its own."""

from __future__ import annotations

import threading

import pytest

from haios.errors import HaiosError, TransportError
from haios.transport.base import fan_out


class Nodes:
    def __init__(self, *, all_local: bool) -> None:
        self.all_local = all_local


def test_remote_nodes_are_worked_on_at_once_and_a_failure_stays_with_its_node() -> None:
    names = [f"node-{i}" for i in range(1, 6)]
    together = threading.Barrier(4, timeout=60)  # passes only when four calls are in flight at once

    def work(node: str) -> str:
        if node == "node-5":
            raise TransportError(f"{node}: cannot connect")
        together.wait()
        return node.upper()

    got = dict(fan_out(Nodes(all_local=False), names, work, parallelism=8))
    assert {n: v for n, v in got.items() if not isinstance(v, HaiosError)} == {n: n.upper() for n in names[:4]}
    failed = got["node-5"]
    assert isinstance(failed, TransportError) and "cannot connect" in failed.message


def test_parallelism_bounds_the_calls_in_flight() -> None:
    lock = threading.Lock()
    now = peak = 0

    def work(node: str) -> None:
        nonlocal now, peak
        with lock:
            now += 1
            peak = max(peak, now)
        threading.Event().wait(0.01)
        with lock:
            now -= 1

    assert len(list(fan_out(Nodes(all_local=False), [f"n{i}" for i in range(12)], work, parallelism=3))) == 12
    assert 1 <= peak <= 3


@pytest.mark.parametrize("transport", [Nodes(all_local=True), object()])
def test_local_nodes_are_worked_on_in_turn(transport: object) -> None:
    seen: list[str] = []
    threads: set[int] = set()

    def work(node: str) -> int:
        seen.append(node)
        threads.add(threading.get_ident())
        return len(seen)

    assert list(fan_out(transport, ["a", "b", "c"], work)) == [("a", 1), ("b", 2), ("c", 3)]
    assert threads == {threading.get_ident()}


def test_an_unexpected_error_is_not_swallowed() -> None:
    def work(node: str) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        list(fan_out(Nodes(all_local=False), ["a", "b"], work))
