"""The writer: locking, durability, group commit, rotation, fatal I/O errors, Lamport merge."""

from __future__ import annotations

import errno
import os
import sys
import threading
from pathlib import Path

import pytest
from helpers import subprocs
from helpers.wal import segments

from haios.errors import WalFailedError, WalLockedError, WalReadOnlyError
from haios.wal import MAX_PAYLOAD, RecordType, Wal, read_records, repair, verify
from haios.wal import format as fmt
from haios.wal import writer as writer_module

STEP = {"name": "s", "outcome": "ok"}


def test_writer_append_returns_consecutive_lamports(tmp_path: Path) -> None:
    with Wal.open(tmp_path / "wal") as wal:
        assert [wal.append(RecordType.STEP, STEP, durable=False) for _ in range(5)] == [1, 2, 3, 4, 5]
    with Wal.open(tmp_path / "wal") as wal:
        assert wal.last_lamport == 5
        assert wal.append(RecordType.COMMIT_PHASE, {"digest": "d"}) == 6
    records = list(read_records(tmp_path / "wal"))
    assert [r.type for r in records][-1] is RecordType.COMMIT_PHASE
    assert isinstance(records[0].payload["ts"], float)


def test_writer_required_fields_are_checked(tmp_path: Path) -> None:
    with Wal.open(tmp_path) as wal, pytest.raises(ValueError, match="BEGIN_PHASE record lacks snapshot, participants"):
        wal.append(RecordType.BEGIN_PHASE, {"g": 1})


def test_writer_second_writer_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer_module, "LOCK_WAIT", 0.1)
    with Wal.open(tmp_path) as wal:
        wal.append(RecordType.STEP, STEP)
        with pytest.raises(WalLockedError, match="another process is writing this WAL") as info:
            Wal.open(tmp_path)
        assert info.value.exit_code == 4
        code = "import sys; from haios.wal import Wal; Wal.open(sys.argv[1])"
        proc = subprocs.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "WalLockedError" in proc.stderr
    Wal.open(tmp_path).close()  # released on close


def test_writer_lock_held_by_a_forked_child_is_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while a WAL is open shares its lock until it execs or exits: reopening the
    WAL in that window waits for the lock instead of calling the child a second writer."""
    monkeypatch.setattr(writer_module, "LOCK_WAIT", 60.0)
    waited = threading.Event()
    real_sleep = writer_module.time.sleep

    def sleep(seconds: float) -> None:
        waited.set()
        real_sleep(seconds)

    monkeypatch.setattr(writer_module.time, "sleep", sleep)
    release_r, release_w = os.pipe()
    wal = Wal.open(tmp_path)
    wal.append(RecordType.STEP, STEP)
    pid = os.fork()
    if pid == 0:  # the child: holds the inherited lock until told to go (or the parent is gone)
        os.close(release_w)
        os.read(release_r, 1)
        os._exit(0)
    os.close(release_r)
    try:
        wal.close()
        outcome: list[object] = []
        opener = threading.Thread(target=lambda: outcome.append(_open_or_error(tmp_path)))
        opener.start()
        for _ in range(1200):  # until the reopen waits or gives up, at most a minute
            if waited.wait(0.05) or not opener.is_alive():
                break
        assert waited.is_set() and opener.is_alive(), f"the reopen did not wait for the child's lock: {outcome}"
    finally:
        os.close(release_w)
        os.waitpid(pid, 0)
    opener.join(60)
    assert len(outcome) == 1 and isinstance(outcome[0], Wal), outcome
    assert outcome[0].last_lamport == 1
    outcome[0].close()


def _open_or_error(path: Path) -> Wal | BaseException:
    try:
        return Wal.open(path)
    except BaseException as exc:  # the test looks at it
        return exc


def test_writer_read_only_refuses_every_append(tmp_path: Path) -> None:
    with Wal.open(tmp_path) as wal:
        wal.append(RecordType.STEP, STEP)
    before = {p.name: p.read_bytes() for p in segments(tmp_path)}
    with Wal.open(tmp_path, read_only=True) as ro:
        assert ro.last_lamport == 1
        for rtype in (RecordType.STEP, RecordType.BEGIN_PHASE):
            with pytest.raises(WalReadOnlyError):
                ro.append(rtype, {"name": "x", "outcome": "y", "snapshot": "s", "participants": []})
    assert {p.name: p.read_bytes() for p in segments(tmp_path)} == before


def test_writer_durable_types_are_always_synced(tmp_path: Path) -> None:
    calls: list[int] = []
    with Wal.open(tmp_path, sync=lambda fd: calls.append(fd)) as wal:
        wal.append(RecordType.STEP, STEP, durable=False)
        assert len(calls) == 1  # creating the first segment syncs its header
        wal.append(RecordType.PREPARE, {"intent_count": 0, "digest": "d"}, durable=False)
        assert len(calls) == 2


def test_writer_group_commit_shares_syncs(tmp_path: Path) -> None:
    import time

    def slow_sync(fd: int) -> None:
        time.sleep(0.005)
        os.fdatasync(fd)

    threads, per_thread = 8, 25
    with Wal.open(tmp_path, sync=slow_sync) as wal:
        barrier = threading.Barrier(threads)

        def work(i: int) -> None:
            barrier.wait()
            for j in range(per_thread):
                wal.append(RecordType.STEP, {"name": f"{i}-{j}", "outcome": "ok"})

        pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        syncs = wal.syncs
    records = list(read_records(tmp_path))
    assert len(records) == threads * per_thread
    assert [r.lamport for r in records] == list(range(1, threads * per_thread + 1))
    assert syncs < threads * per_thread / 2, syncs  # shared, not one per append


def test_writer_rotation_on_record_boundaries(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size=2048) as wal:
        for i in range(100):
            wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": os.urandom(40).hex()}, durable=False)
    segs = segments(tmp_path)
    assert len(segs) > 3
    for seg in segs:
        header = fmt.decode_segment_header(seg.read_bytes()[:64])
        assert seg.name == fmt.segment_name(header.seq, header.first_lamport)
        assert seg.stat().st_size <= 2048
    assert [r.lamport for r in read_records(tmp_path)] == list(range(1, 101))


def test_writer_record_at_the_maximum_size_and_beyond(tmp_path: Path) -> None:
    import base64

    blob = base64.b64encode(os.urandom(MAX_PAYLOAD * 3 // 4 - 200)).decode()
    payload = {"name": "big", "outcome": blob[: MAX_PAYLOAD - 100]}
    with Wal.open(tmp_path, segment_size=1 << 20) as wal:
        raw_len = len(fmt.encode_payload({**payload, "ts": 0.0})[0])
        assert MAX_PAYLOAD - 1000 < raw_len <= MAX_PAYLOAD
        wal.append(RecordType.STEP, {**payload, "ts": 0.0}, durable=False)
        with pytest.raises(ValueError, match="limit is"):
            wal.append(RecordType.STEP, {"name": "x", "outcome": "y" * MAX_PAYLOAD}, durable=False)
        wal.append(RecordType.STEP, STEP)
    records = list(read_records(tmp_path))
    assert records[0].payload["outcome"] == payload["outcome"] and records[1].lamport == 2


def test_writer_incompressible_payloads_are_stored_raw(tmp_path: Path) -> None:
    with Wal.open(tmp_path) as wal:
        for _ in range(20):
            wal.append(RecordType.STEP, {"name": "r", "outcome": os.urandom(300).hex()}, durable=False)
        wal.append(RecordType.STEP, {"name": "c", "outcome": "a" * 3000}, durable=False)
    records = list(read_records(tmp_path))
    assert records[-1].flags & fmt.FLAG_LZ4
    assert sum(1 for r in records[:-1] if r.flags & fmt.FLAG_LZ4) < 20
    assert records[-1].payload["outcome"] == "a" * 3000


def test_writer_lamport_merge_with_peer_event(tmp_path: Path) -> None:
    with Wal.open(tmp_path) as wal:
        wal.append(RecordType.STEP, STEP)
        assert (
            wal.append(RecordType.EVENT, {"name": "phase_transition.started", "vc": {"n2": 4}}, observed_lamport=41)
            == 42
        )
        assert wal.append(RecordType.STEP, STEP) == 43
        assert wal.append(RecordType.STEP, STEP, observed_lamport=10) == 44  # an older peer event changes nothing
    assert [r.lamport for r in read_records(tmp_path)] == [1, 42, 43, 44]
    assert verify(tmp_path).ok


@pytest.mark.parametrize("failing_call", [1, 3, 7])
def test_writer_enospc_on_write_loses_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_call: int
) -> None:
    real = writer_module.write_all
    calls = [0]

    def flaky(fd: int, data: bytes) -> None:
        calls[0] += 1
        if calls[0] == failing_call + 1:  # +1: the segment header is the first write
            os.write(fd, data[: len(data) // 2])  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    acknowledged = []
    with monkeypatch.context() as mp:
        mp.setattr(writer_module, "write_all", flaky)
        wal = Wal.open(tmp_path)
        with pytest.raises(WalFailedError, match="No space left on device") as info:
            for i in range(20):
                acknowledged.append(wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": "ok"}))
        assert "disk is full" in info.value.hint
        with pytest.raises(WalFailedError, match="earlier WAL write failed"):
            wal.append(RecordType.STEP, STEP)
        wal.close()
    assert len(acknowledged) == failing_call - 1
    with Wal.open(tmp_path) as reopened:  # repairs the torn tail
        assert reopened.last_lamport == len(acknowledged)
        reopened.append(RecordType.STEP, STEP)
    assert [r.lamport for r in read_records(tmp_path)] == list(range(1, len(acknowledged) + 2))


@pytest.mark.parametrize("failing_sync", [2, 4])
def test_writer_fsync_error_is_fatal_and_never_retried(tmp_path: Path, failing_sync: int) -> None:
    calls: list[int] = []

    def sync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == failing_sync:
            raise OSError(errno.EIO, "Input/output error")
        os.fdatasync(fd)

    acknowledged = []
    wal = Wal.open(tmp_path, sync=sync)
    with pytest.raises(WalFailedError, match="fsync failed: Input/output error"):
        for i in range(10):
            acknowledged.append(wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": "ok"}))
    count = len(calls)
    with pytest.raises(WalFailedError):
        wal.append(RecordType.STEP, STEP)
    with pytest.raises(WalFailedError):
        wal.sync()
    wal.close()
    assert len(calls) == count  # no retry after the failure
    assert [r.lamport for r in read_records(tmp_path)][: len(acknowledged)] == acknowledged


def test_writer_crash_during_rotation_before_rename(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size=1024) as wal:
        for i in range(10):
            wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": "x" * 50}, durable=False)
        last = wal.last_lamport
    # the temp file of a segment that was never renamed into place
    stale = tmp_path / f".{fmt.segment_name(99, last + 1)}.tmp"
    stale.write_bytes(b"half a header")
    with Wal.open(tmp_path, segment_size=1024) as wal:
        assert not stale.exists()
        assert wal.append(RecordType.STEP, STEP) == last + 1
    assert verify(tmp_path).ok


def test_writer_crash_after_rename_before_record(tmp_path: Path) -> None:
    with Wal.open(tmp_path, segment_size=1024) as wal:
        for i in range(10):
            wal.append(RecordType.STEP, {"name": f"s{i}", "outcome": "x" * 50}, durable=False)
        last, crc, seq = wal.last_lamport, wal._crc, wal._seq
    # a new segment that got its header but no record before the crash
    header = fmt.SegmentHeader(
        seq + 1, last + 1, fmt.decode_segment_header(segments(tmp_path)[0].read_bytes()[:64]).wal_id, 5, crc, last
    )
    (tmp_path / fmt.segment_name(seq + 1, last + 1)).write_bytes(header.encode())
    assert verify(tmp_path).ok
    with Wal.open(tmp_path, segment_size=1024) as wal:
        assert wal.append(RecordType.STEP, STEP) == last + 1
    assert [r.lamport for r in read_records(tmp_path)][-1] == last + 1


def test_writer_repair_then_append_then_crash_then_read_back(tmp_path: Path) -> None:
    with Wal.open(tmp_path) as wal:
        for i in range(10):
            wal.append(RecordType.STEP, {"name": f"a{i}", "outcome": "ok"})
    seg = segments(tmp_path)[0]
    with open(seg, "ab") as fh:
        fh.write(b"\x00" * 100)  # torn tail
    assert repair(tmp_path).action == "truncated"
    with Wal.open(tmp_path) as wal:
        for i in range(5):
            wal.append(RecordType.STEP, {"name": f"b{i}", "outcome": "ok"})
    size = seg.stat().st_size
    with open(seg, "r+b") as fh:  # crash in the middle of the last append
        fh.truncate(size - 7)
    with Wal.open(tmp_path) as wal:  # opening repairs the new torn tail
        assert wal.last_lamport == 14
    names = [r.payload["name"] for r in read_records(tmp_path)]
    assert names == [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(4)]
    assert len(list(tmp_path.glob("*.broken*"))) == 2


def test_writer_open_refuses_mid_log_corruption(tmp_path: Path) -> None:
    from helpers.wal import flip

    from haios.errors import WalCorruptError

    with Wal.open(tmp_path) as wal:
        for i in range(10):
            wal.append(RecordType.STEP, {"name": f"a{i}", "outcome": "ok"})
    records = list(read_records(tmp_path))
    flip(segments(tmp_path)[0], records[3].offset + 20)
    with pytest.raises(WalCorruptError) as info:
        Wal.open(tmp_path)
    assert not info.value.corruption.torn_tail
    with pytest.raises(WalCorruptError):
        Wal.open(tmp_path, read_only=True)  # never guesses, read-only or not
    assert not list(tmp_path.glob("*.broken*"))  # and changes nothing
