"""haios's SFTP client: against a real OpenSSH server, and against a scripted one that answers short,
out of order or not at all as the protocol says."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.sshd import Sshd

from haios.transport.sftp import CHUNK, MAX_PACKET, WINDOW, ProtocolError, Range, Sftp


@pytest.fixture
def session(sshd: Sshd) -> Iterator[Sftp]:
    import paramiko

    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # the fixture's own server
    client.connect("127.0.0.1", port=sshd.port, username="root", key_filename=str(sshd.client_key))
    channel = client.get_transport().open_session()  # type: ignore[union-attr]
    channel.settimeout(30)
    channel.invoke_subsystem("sftp")
    try:
        yield Sftp(channel)
    finally:
        client.close()


def test_listings_of_hundreds_of_entries_and_a_missing_directory_in_one_call(session: Sftp, tmp_path: Path) -> None:
    many = tmp_path / "many"
    many.mkdir()
    for i in range(450):  # OpenSSH answers 100 entries at a time: several steps
        (many / f"f{i:03d}").write_bytes(b"x" * i)
    os.mkfifo(many / "fifo")
    listed, missing = session.listdirs([str(many), str(tmp_path / "nope")])
    assert isinstance(missing, FileNotFoundError)
    assert not isinstance(listed, OSError)
    by_name = {e.filename: e for e in listed}
    assert len(by_name) == 451 and by_name["f123"].st_size == 123 and by_name["f123"].is_regular()
    assert not by_name["fifo"].is_regular()


def test_whole_files_as_listed_grown_shrunk_empty_missing_large_and_over_the_limit(
    session: Sftp, tmp_path: Path
) -> None:
    data = {name: os.urandom(size) for name, size in [("exact", 700), ("grown", 900), ("shrunk", 10), ("empty", 0)]}
    data["large"] = os.urandom(5 * CHUNK + 17)
    for name, body in data.items():
        (tmp_path / name).write_bytes(body)
    hints = {"exact": 700, "grown": 100, "shrunk": 500, "empty": 0, "large": 5 * CHUNK + 17}
    files = [(str(tmp_path / n), hints[n], 1 << 20) for n in data]
    files += [(str(tmp_path / "missing"), 10, 1 << 20), (str(tmp_path / "large"), 0, 1000)]
    got = session.read_files(files)
    assert got[: len(data)] == list(data.values())
    assert isinstance(got[-2], FileNotFoundError)
    assert got[-1] == data["large"][:1001]  # limit + 1 bytes: the caller sees that it is over


def test_a_range_reaches_its_sink_in_steps_of_at_most_a_window(session: Sftp, tmp_path: Path) -> None:
    body = os.urandom(3 * WINDOW * CHUNK + 5)
    (tmp_path / "seg").write_bytes(body)
    (handle,) = session.open_many([str(tmp_path / "seg")])
    assert isinstance(handle, bytes)
    out = bytearray()
    span = Range(str(tmp_path / "seg"), handle, 100, len(body) + 1000, sink=out.extend)
    session.copy([span])
    assert bytes(out) == body[100:] and span.at_end and span.error is None


# -- a scripted server ------------------------------------------------------------------------------


class FakeServer:
    """A channel whose other end is an SFTP server over the files in ``files``, which answers every
    batch in reverse order and each READ with at most ``short`` bytes, or as ``break_with`` says."""

    def __init__(self, files: dict[str, bytes], *, short: int = 1 << 30, version: int = 3) -> None:
        self.files = files
        self.short = short
        self.version = version
        self.handles: dict[bytes, str] = {}
        self.out = bytearray()
        self.break_with: Any = None  # bytes sent instead of the next batch's answers
        self.requests = 0

    def sendall(self, data: bytes) -> None:
        answers, pos = [], 0
        while pos < len(data):
            (length,) = struct.unpack_from(">I", data, pos)
            answers.append(self._answer(data[pos + 4 : pos + 4 + length]))
            pos += 4 + length
        if self.break_with is not None:
            self.out += self.break_with
            self.break_with = None
            return
        for answer in reversed(answers):
            self.out += struct.pack(">I", len(answer)) + answer

    def _answer(self, packet: bytes) -> bytes:
        kind = packet[0]
        if kind == 1:
            return bytes([2]) + struct.pack(">I", self.version)
        self.requests += 1
        (rid,) = struct.unpack_from(">I", packet, 1)
        (n,) = struct.unpack_from(">I", packet, 5)
        name = packet[9 : 9 + n]
        if kind == 3:  # OPEN
            path = name.decode()
            if path not in self.files:
                return bytes([101]) + struct.pack(">II", rid, 2) + b"\0\0\0\0\0\0\0\0"
            handle = b"h%d" % len(self.handles)
            self.handles[handle] = path
            return bytes([102]) + struct.pack(">II", rid, len(handle)) + handle
        if kind == 5:  # READ
            offset, length = struct.unpack_from(">QI", packet, 9 + n)
            body = self.files[self.handles[name]]
            if offset >= len(body):
                return bytes([101]) + struct.pack(">II", rid, 1) + b"\0\0\0\0\0\0\0\0"
            chunk = body[offset : offset + min(length, self.short)]
            return bytes([103]) + struct.pack(">II", rid, len(chunk)) + chunk
        return bytes([101]) + struct.pack(">II", rid, 0) + b"\0\0\0\0\0\0\0\0"  # CLOSE and the rest: OK

    def recv(self, size: int) -> bytes:
        chunk, self.out = bytes(self.out[:size]), self.out[size:]
        return chunk


def test_answers_out_of_order_and_short_reads_still_give_every_byte() -> None:
    files = {"/a": os.urandom(3 * CHUNK + 1), "/b": b"small\n", "/c": b""}
    server = FakeServer(files, short=1000)
    session = Sftp(server)
    got = session.read_files([("/a", 3 * CHUNK + 1, 1 << 20), ("/b", 6, 100), ("/c", 0, 100), ("/gone", 0, 10)])
    assert got[:3] == [files["/a"], files["/b"], files["/c"]] and isinstance(got[3], FileNotFoundError)


def test_a_file_as_listed_takes_one_step_of_reads() -> None:
    server = FakeServer({"/a": b"x" * 700})
    session = Sftp(server)
    (handle,) = session.open_many(["/a"])
    before = server.requests
    assert isinstance(handle, bytes)
    span = Range("/a", handle, 0, 10_000, expect=700)
    session.copy([span])
    assert span.result() == b"x" * 700 and server.requests - before == 2  # the bytes, and the end


def _broken(answer: bytes) -> bytes:
    return struct.pack(">I", len(answer)) + answer


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (struct.pack(">I", MAX_PACKET + 1) + b"\x67", "longer than any server sends"),
        (_broken(bytes([102]) + struct.pack(">II", 99, 1) + b"h"), "which was not made"),
        (_broken(bytes([102]) + struct.pack(">II", 1, 5) + b"abc"), "ends inside a string"),
        (_broken(bytes([104]) + struct.pack(">II", 1, 5)), "of type 104"),
        (_broken(bytes([102])), "without a request id"),
        (_broken(bytes([101]) + struct.pack(">III", 1, 0, 0)), "no error and nothing else"),  # OPEN: "OK"
    ],
)
def test_a_server_that_breaks_the_protocol_ends_the_session(reply: bytes, words: str) -> None:
    server = FakeServer({"/a": b"abc"})
    session = Sftp(server)
    server.break_with = reply
    with pytest.raises(ProtocolError, match=words):
        session.open_many(["/a"])


def test_more_data_than_asked_for_is_refused() -> None:
    server = FakeServer({"/a": b"abcdef"})
    session = Sftp(server)
    (handle,) = session.open_many(["/a"])
    assert isinstance(handle, bytes)
    server.break_with = _broken(bytes([103]) + struct.pack(">II", server.requests + 1, 40_000) + b"y" * 40_000)
    with pytest.raises(ProtocolError, match="more data than was asked for"):
        session.copy([Range("/a", handle, 0, 6)])


def test_another_protocol_version_and_a_session_that_ends_are_errors() -> None:
    with pytest.raises(ProtocolError, match="version 3"):
        Sftp(FakeServer({}, version=4))
    server = FakeServer({"/a": b"abc"})
    session = Sftp(server)
    server.break_with = b""
    with pytest.raises(EOFError):
        session.open_many(["/a"])
