"""The WAL's own summary: its writer brings it up to date when it closes, and a reader with no summary
of its own adopts it only while every byte it speaks of still has the CRC-32 it names."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from helpers.wal import flip, segments

from haios.errors import StorageError
from haios.wal import RecordType, Wal
from haios.wal import summary as summaries
from haios.wal.summary import SUMMARY_NAME, adopt, fold_wal

NODE = "node-1"
SEGMENT = 4096  # small segments: a few phases fill one, so a WAL has sealed segments and a current one


def _common(g: int, phase: str, trace: str | None = None) -> dict[str, Any]:
    return {"node": NODE, "g": g, "phase": phase, "trace_id": trace or f"t-{g}-{phase}", "vc": {NODE: g}}


def _history(wal: Wal, first_g: int, count: int) -> None:
    """Whole phases, an aborted one with a side effect left to compensate, an applied override."""
    for g in range(first_g, first_g + count):
        for phase in ("ANALYZE", "BLUEPRINT"):
            c = _common(g, phase)
            wal.append(RecordType.BEGIN_PHASE, {**c, "ts": 10.0 * g, "snapshot": f"s{g}", "participants": [NODE]})
            if g % 3 == 0 and phase == "BLUEPRINT":
                effect = {"key": f"k{g}", "kind": "call", "params": {}, "compensator": "undo", "cost": 1}
                wal.append(RecordType.SIDE_EFFECT, {**c, "ts": 10.0 * g + 1, **effect})
                wal.append(RecordType.ABORT_PHASE, {**c, "ts": 10.0 * g + 2, "reason": "test"})
                continue
            wal.append(RecordType.PREPARE, {**c, "ts": 10.0 * g + 1, "intent_count": 0, "digest": "d"})
            wal.append(RecordType.COMMIT_PHASE, {**c, "ts": 10.0 * g + 2.5, "digest": "d"})
    recovery = {"token": 1, "shard": "s", "step": "override", "outcome": {"nonce": f"n{first_g}"}}
    wal.append(RecordType.RECOVERY, {**_common(first_g, "ANALYZE", "r"), **recovery})


def _write(directory: Path, first_g: int, count: int) -> None:
    with Wal.open(directory, segment_size=SEGMENT) as wal:
        _history(wal, first_g, count)


def _meaning(state: dict[str, Any]) -> dict[str, Any]:
    """What a summary says of the WAL (not how it was read)."""
    keep = ("cursor", "phases", "durations", "last_lamport", "records", "io", "override_nonces", "last_record")
    return {k: state.get(k) for k in keep}


def _full(directory: Path) -> dict[str, Any]:
    return fold_wal(directory, None, partial_ok=False)[0]


def test_the_writer_leaves_a_summary_that_is_the_full_fold(tmp_path: Path) -> None:
    _write(tmp_path, 1, 12)
    assert len(segments(tmp_path)) > 2
    own = adopt(tmp_path)
    assert own is not None and _meaning(own) == _meaning(_full(tmp_path))
    assert own["records"] > 40 and own["override_nonces"] == ["n1"]
    assert {p["ended"] for p in own["phases"]} == {"COMMIT_PHASE", "ABORT_PHASE"}


def test_each_writer_folds_in_only_what_it_appended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, 1, 12)
    read: list[int] = []
    real = summaries.fold_wal

    def counting(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        read.append(out[1])
        return out

    monkeypatch.setattr(summaries, "fold_wal", counting)
    before = sum(p.stat().st_size for p in segments(tmp_path))
    _write(tmp_path, 13, 2)
    after = sum(p.stat().st_size for p in segments(tmp_path))
    assert read and read[-1] < (after - before) + 64  # the new records (and no more than a new header)
    own = adopt(tmp_path)
    assert own is not None and _meaning(own) == _meaning(_full(tmp_path))
    assert own["override_nonces"] == ["n1", "n13"]


def test_a_reader_goes_on_from_an_older_summary_with_what_came_after(tmp_path: Path) -> None:
    _write(tmp_path, 1, 5)
    older = (tmp_path / SUMMARY_NAME).read_bytes()
    _write(tmp_path, 6, 4)
    (tmp_path / SUMMARY_NAME).write_bytes(older)  # appends since it was written: its bytes are unchanged
    own = adopt(tmp_path)
    assert own is not None
    state, read, corruption = fold_wal(tmp_path, own, partial_ok=False)
    assert corruption is None and 0 < read < sum(p.stat().st_size for p in segments(tmp_path)) / 2
    assert _meaning(state) == _meaning(_full(tmp_path))


@pytest.mark.parametrize("where", ["sealed", "current"])
def test_a_changed_byte_below_the_cursor_is_not_adopted(tmp_path: Path, where: str) -> None:
    _write(tmp_path, 1, 12)
    seg = segments(tmp_path)[0 if where == "sealed" else -1]
    flip(seg, seg.stat().st_size // 2)
    assert adopt(tmp_path) is None
    _state, _read, corruption = fold_wal(tmp_path, None, partial_ok=False)
    assert corruption is not None and not corruption["torn_tail"]  # the full read says what is wrong


def test_a_summary_of_another_wal_is_not_adopted(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    _write(one, 1, 6)
    _write(other, 1, 6)  # the same records, other salts: other bytes
    (one / SUMMARY_NAME).write_bytes((other / SUMMARY_NAME).read_bytes())
    assert adopt(one) is None


def test_a_removed_or_cut_segment_is_not_adopted(tmp_path: Path) -> None:
    _write(tmp_path, 1, 12)
    last = segments(tmp_path)[-1]
    os.truncate(last, last.stat().st_size - 10)
    assert adopt(tmp_path) is None
    _write(tmp_path / "b", 1, 12)
    segments(tmp_path / "b")[-1].unlink()
    assert adopt(tmp_path / "b") is None


def _forge(directory: Path, change: Any) -> None:
    data = json.loads((directory / SUMMARY_NAME).read_text())
    change(data)
    (directory / SUMMARY_NAME).write_text(json.dumps(data))


def _phase0(change: Any) -> Any:
    return lambda data: change(data["phases"][0])


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.update(version=6),
        lambda d: d.update(cursor={"seq": 0, "offset": "64", "lamport": 1, "crc": 1}),
        lambda d: d.update(records=True),
        lambda d: d.update(io={"wal_bytes": 1}),
        lambda d: d.update(durations={"ANALYZE": ["1"]}),
        lambda d: d.update(durations={"ANALYZE": [1.0, True]}),
        lambda d: d.update(durations={"ANALYZE": [2.0, None, 1.0]}),
        lambda d: d.update(durations={"ANALYZE": [1.0] * 101}),
        lambda d: d.update(override_nonces=[1]),
        lambda d: d.update(crc32={"x": [1]}),
        lambda d: d.update(last_record="64"),
        lambda d: d.update(phases={"g": 1}),
        _phase0(lambda p: p.update(phase="EVIL")),
        _phase0(lambda p: p.update(g=-1)),
        _phase0(lambda p: p.update(begin_ts="soon")),
        _phase0(lambda p: p.update(participants="node-1")),
        _phase0(lambda p: p.update(ended="MAYBE")),
        _phase0(lambda p: p.update(intents=[{"op": "write"}])),
        _phase0(lambda p: p.update(side_effects={"k": {"secret": 1}})),
        _phase0(lambda p: p.update(extra=1)),
        _phase0(lambda p: p.pop("g")),
        lambda d: d["crc32"].clear(),
        lambda d: d.update(last_record=d["last_record"] - 1),
    ],
)
def test_a_summary_not_as_written_is_not_adopted(tmp_path: Path, change: Any) -> None:
    _write(tmp_path, 1, 6)
    assert adopt(tmp_path) is not None
    _forge(tmp_path, change)
    assert adopt(tmp_path) is None


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"\xff\xfe", b"[" * 100_000, b'{"version": 7}'])
def test_garbage_is_not_adopted(tmp_path: Path, body: bytes) -> None:
    _write(tmp_path, 1, 3)
    (tmp_path / SUMMARY_NAME).write_bytes(body)
    assert adopt(tmp_path) is None


def test_a_summary_that_is_no_regular_file_is_not_read(tmp_path: Path) -> None:
    _write(tmp_path, 1, 3)
    (tmp_path / SUMMARY_NAME).unlink()
    os.mkfifo(tmp_path / SUMMARY_NAME)  # opening it for reading must not wait for a writer
    assert adopt(tmp_path) is None
    (tmp_path / SUMMARY_NAME).unlink()
    outside = tmp_path.parent / f"{tmp_path.name}-elsewhere.json"
    _write(tmp_path / "b", 1, 3)
    outside.write_bytes((tmp_path / "b" / SUMMARY_NAME).read_bytes())
    (tmp_path / "b" / SUMMARY_NAME).unlink()
    (tmp_path / "b" / SUMMARY_NAME).symlink_to(outside)
    assert adopt(tmp_path / "b") is None


def test_a_summary_that_cannot_be_written_does_not_fail_the_writer(tmp_path: Path) -> None:
    _write(tmp_path, 1, 3)
    (tmp_path / SUMMARY_NAME).unlink()
    (tmp_path / SUMMARY_NAME).mkdir()  # atomic_write cannot replace a directory
    _write(tmp_path, 4, 2)  # closes without an error
    assert adopt(tmp_path) is None
    (tmp_path / SUMMARY_NAME).rmdir()
    _write(tmp_path, 6, 1)  # the next writer folds the whole WAL again
    own = adopt(tmp_path)
    assert own is not None and _meaning(own) == _meaning(_full(tmp_path))


def test_a_summary_that_cannot_be_rewritten_stays_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, 1, 4)
    before = (tmp_path / SUMMARY_NAME).read_bytes()

    def full(*args: Any, **kwargs: Any) -> None:
        raise StorageError(f"{tmp_path / SUMMARY_NAME}: No space left on device")

    monkeypatch.setattr(summaries, "atomic_write", full)
    _write(tmp_path, 5, 2)
    assert (tmp_path / SUMMARY_NAME).read_bytes() == before  # still true of the bytes it names
    own = adopt(tmp_path)
    assert own is not None
    state, read, _corruption = fold_wal(tmp_path, own, partial_ok=False)
    assert read > 0 and _meaning(state) == _meaning(_full(tmp_path))


def test_a_wal_without_a_summary_is_summarised_a_backlog_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path, 1, 12)  # as an older haios left it: no summary
    (tmp_path / SUMMARY_NAME).unlink()
    size = sum(p.stat().st_size for p in segments(tmp_path))
    monkeypatch.setattr(summaries, "BACKLOG_PER_CLOSE", size // 4)
    ends = []
    for g in range(13, 19):
        _write(tmp_path, g, 1)  # each writer folds what it appended and a quarter more of the rest
        own = adopt(tmp_path)
        assert own is not None
        ends.append((own["cursor"]["seq"], own["cursor"]["offset"]))
        state, _read, corruption = fold_wal(tmp_path, own, partial_ok=False)  # a reader goes on from it
        assert corruption is None and _meaning(state) == _meaning(_full(tmp_path))
    last = segments(tmp_path)[-1]
    assert ends == sorted(ends) and ends[0] < ends[-1]
    assert ends[-1] == (int(last.name[:16], 16), last.stat().st_size)  # caught up with the WAL


def test_a_summary_stops_at_mid_log_corruption_and_the_reader_finds_it(tmp_path: Path) -> None:
    _write(tmp_path, 1, 12)
    first = segments(tmp_path)[0]
    flip(first, first.stat().st_size // 2)
    (tmp_path / SUMMARY_NAME).unlink()
    _write(tmp_path, 13, 1)  # a writer verifies only the last segment: it appends, then summarises
    own = adopt(tmp_path)
    assert own is not None and own["cursor"]["seq"] == 0  # up to the last good record
    _state, _read, corruption = fold_wal(tmp_path, own, partial_ok=False)
    assert corruption is not None and not corruption["torn_tail"]
    assert (corruption["segment"], corruption["offset"]) == (first.name, own["cursor"]["offset"])


def test_a_fold_pauses_the_cycle_collector_and_leaves_it_as_it_found_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gc

    from haios.wal import summary as summary_mod

    _write(tmp_path, 1, 3)
    seen: list[bool] = []
    real = summary_mod.fold_record

    def watched(*args: Any) -> None:
        seen.append(gc.isenabled())
        real(*args)

    monkeypatch.setattr(summary_mod, "fold_record", watched)
    summary_mod.fold_wal(tmp_path, None, partial_ok=False)
    assert seen and not any(seen) and gc.isenabled()
    gc.disable()
    try:
        summary_mod.fold_wal(tmp_path, None, partial_ok=False)
        assert not gc.isenabled()  # it was off: it stays off
    finally:
        gc.enable()
