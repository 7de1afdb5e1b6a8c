"""SSHSIG signatures: interop with the real ssh-keygen both ways, and every malformed variant rejected."""

from __future__ import annotations

import base64
import struct
from pathlib import Path

import pytest
from helpers import subprocs

from haios.errors import SignatureError
from haios.overrides.sshsig import MAGIC, armor, parse, sign, unarmor, verify
from haios.sshkeys import parse_public_key

NS = "haios-override"
PAYLOAD = b'{"action":"resume","cluster":"c1","nonce":"00112233445566778899aabbccddeeff"}'
KEY_TYPES = [("ed25519", []), ("rsa", ["-b", "2048"]), ("ecdsa", ["-b", "256"]), ("ecdsa", ["-b", "384"])]


def _key(tmp_path: Path, kind: str, extra: list[str]) -> Path:
    path = tmp_path / f"id_{kind}{''.join(extra).replace('-b', '')}"
    subprocs.run(["ssh-keygen", "-q", "-t", kind, *extra, "-N", "", "-C", "alice", "-f", str(path)], check=True)
    return path


def _keygen_sign(key: Path, message: bytes, tmp_path: Path, namespace: str = NS, *opts: str) -> str:
    data = tmp_path / "payload"
    data.write_bytes(message)
    subprocs.run(["ssh-keygen", "-q", "-Y", "sign", "-n", namespace, "-f", str(key), *opts, str(data)], check=True)
    return (tmp_path / "payload.sig").read_text()


@pytest.mark.parametrize(("kind", "extra"), KEY_TYPES)
def test_signatures_by_ssh_keygen_verify(tmp_path: Path, kind: str, extra: list[str]) -> None:
    key = _key(tmp_path, kind, extra)
    sig = verify(_keygen_sign(key, PAYLOAD, tmp_path), PAYLOAD, NS)
    assert sig.public_key.blob == parse_public_key(key.with_suffix(".pub").read_text()).blob
    with pytest.raises(SignatureError, match="does not match"):
        verify(_keygen_sign(key, PAYLOAD, tmp_path), PAYLOAD + b" ", NS)


@pytest.mark.parametrize(("kind", "extra"), KEY_TYPES)
def test_signatures_by_haios_verify_with_ssh_keygen(tmp_path: Path, kind: str, extra: list[str]) -> None:
    key = _key(tmp_path, kind, extra)
    text = sign(PAYLOAD, key, NS)
    (tmp_path / "sig").write_text(text)
    signers = tmp_path / "allowed_signers"
    signers.write_text(f"alice {key.with_suffix('.pub').read_text()}")
    proc = subprocs.run(
        ["ssh-keygen", "-Y", "verify", "-f", str(signers), "-I", "alice", "-n", NS, "-s", str(tmp_path / "sig")],
        input=PAYLOAD,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert verify(text, PAYLOAD, NS).public_key.key_type.startswith(("ssh-", "ecdsa-"))


def test_sha256_signatures_by_ssh_keygen(tmp_path: Path) -> None:
    key = _key(tmp_path, "ed25519", [])
    sig = verify(_keygen_sign(key, PAYLOAD, tmp_path, NS, "-O", "hashalg=sha256"), PAYLOAD, NS)
    assert sig.hash_algorithm == "sha256"


@pytest.mark.parametrize("namespace", ["git", "file"])
def test_other_namespaces_are_rejected(tmp_path: Path, namespace: str) -> None:
    key = _key(tmp_path, "ed25519", [])
    with pytest.raises(SignatureError, match=f"namespace '{namespace}', expected 'haios-override'"):
        verify(_keygen_sign(key, PAYLOAD, tmp_path, namespace), PAYLOAD, NS)


def _fields(text: str) -> list[bytes]:
    blob = unarmor(text)[len(MAGIC) + 4 :]
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from(">I", blob, pos)
        out.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


def _rebuild(fields: list[bytes], version: int = 1, tail: bytes = b"") -> str:
    body = b"".join(struct.pack(">I", len(f)) + f for f in fields)
    return armor(MAGIC + struct.pack(">I", version) + body + tail)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: _rebuild(f, version=2), "SSHSIG version 2"),
        (lambda f: _rebuild(f, tail=b"\0"), "trailing bytes"),
        (lambda f: _rebuild([f[0], f[1], f[2], b"md5", f[4]]), "hash algorithm 'md5' is not allowed"),
        (lambda f: _rebuild([f[0], f[1], f[2], b"sha1", f[4]]), "hash algorithm 'sha1' is not allowed"),
        (lambda f: _rebuild([f[0], f[1], f[2], b"sha256", f[4]]), "does not match"),  # claims another hash
        (lambda f: _rebuild(f[:4]), "ends before its signature"),
        (lambda f: armor(b"SSHSIX" + unarmor(_rebuild(f))[6:]), "magic"),
    ],
)
def test_malformed_signatures_are_rejected(tmp_path: Path, change: object, reason: str) -> None:
    key = _key(tmp_path, "ed25519", [])
    good = _keygen_sign(key, PAYLOAD, tmp_path)
    with pytest.raises(SignatureError, match=reason):
        verify(change(_fields(good)), PAYLOAD, NS)  # type: ignore[operator]


def test_rsa_sha1_signature_format_is_rejected(tmp_path: Path) -> None:
    key = _key(tmp_path, "rsa", ["-b", "2048"])
    fields = _fields(_keygen_sign(key, PAYLOAD, tmp_path))
    sig = fields[4]
    (n,) = struct.unpack_from(">I", sig, 0)
    forged = struct.pack(">I", 7) + b"ssh-rsa" + sig[4 + n :]
    with pytest.raises(SignatureError, match="'ssh-rsa' is not allowed"):
        verify(_rebuild([*fields[:4], forged]), PAYLOAD, NS)


def test_unsupported_key_type_is_rejected_not_a_crash(tmp_path: Path) -> None:
    key = _key(tmp_path, "ed25519", [])
    fields = _fields(_keygen_sign(key, PAYLOAD, tmp_path))
    dss = struct.pack(">I", 7) + b"ssh-dss" + struct.pack(">I", 1) + b"\x01" * 1
    with pytest.raises(SignatureError):
        verify(_rebuild([dss, *fields[1:]]), PAYLOAD, NS)
    with pytest.raises(SignatureError, match="not an armored SSH signature"):
        parse("ssh-ed25519 " + base64.b64encode(b"x").decode())
