"""A phase executor for crash tests: runs one phase and SIGKILLs itself at the named point."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from haios.node import Node
from haios.node import manifest as manifest_module
from haios.node import transaction as tx_module

POINTS = [
    "after_begin",
    "after_first_intent",
    "after_intents",
    "after_side_effect",
    "after_prepare_record",
    "mid_apply",
    "after_apply",
    "after_commit_record",
    "none",
]
INTENTS = [("etc/a.conf", b"new a\n"), ("etc/b.conf", b"brand new b\n"), ("old.txt", None)]


def die(point: str, stop: str) -> None:
    if point == stop:
        os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    root, stop = Path(sys.argv[1]), sys.argv[2]
    real_apply, real_write, real_append = tx_module.apply_intents, manifest_module.write_data, None
    writes = [0]

    def counting_write(target: Path, body: bytes) -> None:
        writes[0] += 1
        if writes[0] == 2:
            die("mid_apply", stop)  # one data/ file written, the next not, the manifest not yet
        real_write(target, body)

    def apply(data: Path, intents: list[dict[str, object]], schemas: object = None) -> int:
        die("after_prepare_record", stop)
        applied = real_apply(data, intents, schemas)  # type: ignore[arg-type]
        die("after_apply", stop)
        return applied

    tx_module.apply_intents = apply
    manifest_module.write_data = counting_write
    node = Node(root)
    tx = node.begin(1, "ANALYZE", participants=[node.name])
    real_append = tx._append

    def append(rtype: object, fields: dict[str, object], *, durable: bool = True) -> int:
        lamport = real_append(rtype, fields, durable=durable)  # type: ignore[arg-type]
        if getattr(rtype, "name", "") == "COMMIT_PHASE":
            die("after_commit_record", stop)
        return lamport

    tx._append = append  # type: ignore[method-assign]
    die("after_begin", stop)
    for i, (path, content) in enumerate(INTENTS):
        tx.intent(path, content)
        if i == 0:
            die("after_first_intent", stop)
    die("after_intents", stop)
    tx.side_effect("vm-1", "fakecloud.vm", {"size": "s"}, "fakecloud-vm", {"amount": 3, "currency": "EUR"})
    die("after_side_effect", stop)
    tx.prepare()
    tx.commit()


if __name__ == "__main__":
    main()
