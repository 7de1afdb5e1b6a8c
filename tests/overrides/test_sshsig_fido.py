"""FIDO (hardware token) SSHSIG signatures, verified exactly as OpenSSH verifies them. A token is
played in software here (its private key in cryptography); every verdict of haios is checked
against ``ssh-keygen -Y verify`` on the same bytes."""

from __future__ import annotations

import base64
import hashlib
import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from helpers import Invoke, subprocs

from haios.errors import SignatureError
from haios.overrides.sshsig import MAGIC, armor, sk_signed_data, verify
from haios.sshkeys import parse_public_key

NAMESPACE = "haios-override"
MESSAGE = b'{"action":"resume"}'


def _s(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _s(b"\0" + raw if raw[0] & 0x80 else raw)


def _token_signature(
    kind: str, *, flags: int = 0x01, counter: int = 7, application: bytes = b"ssh:", message: bytes = MESSAGE
) -> tuple[str, str]:
    """(armored SSHSIG of ``message``, public key line) made as a FIDO token makes them."""
    if kind == "ed25519":
        key_type = b"sk-ssh-ed25519@openssh.com"
        private = ed25519.Ed25519PrivateKey.generate()
        raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        key_blob = _s(key_type) + _s(raw) + _s(application)
    else:
        key_type = b"sk-ecdsa-sha2-nistp256@openssh.com"
        private_ec = ec.generate_private_key(ec.SECP256R1())
        point = private_ec.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        key_blob = _s(key_type) + _s(b"nistp256") + _s(point) + _s(application)
    digest = hashlib.sha512(message).digest()
    data = MAGIC + _s(NAMESPACE.encode()) + _s(b"") + _s(b"sha512") + _s(digest)
    signed = sk_signed_data(application, flags, counter, data)
    if kind == "ed25519":
        sig = private.sign(signed)
    else:
        r, s = decode_dss_signature(private_ec.sign(signed, ec.ECDSA(hashes.SHA256())))
        sig = _mpint(r) + _mpint(s)
    field = _s(key_type) + _s(sig) + bytes([flags]) + struct.pack(">I", counter)
    blob = MAGIC + struct.pack(">I", 1) + _s(key_blob) + _s(NAMESPACE.encode()) + _s(b"") + _s(b"sha512") + _s(field)
    return armor(blob), f"{key_type.decode()} {base64.b64encode(key_blob).decode()}"


def _openssh_accepts(tmp_path: Path, signature: str, key_line: str) -> bool:
    (tmp_path / "allowed").write_text(f"alice {key_line}\n")
    (tmp_path / "msg.sig").write_text(signature)
    done = subprocs.run(
        [
            "ssh-keygen",
            "-Y",
            "verify",
            "-f",
            str(tmp_path / "allowed"),
            "-I",
            "alice",
            "-n",
            NAMESPACE,
            "-s",
            str(tmp_path / "msg.sig"),
        ],
        input=MESSAGE,
        capture_output=True,
        timeout=60,
    )
    return done.returncode == 0


def _haios_accepts(signature: str) -> bool:
    try:
        verify(signature, MESSAGE, NAMESPACE)
    except SignatureError:
        return False
    return True


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_token_signatures_verify_as_openssh_verifies_them(tmp_path: Path, kind: str) -> None:
    signature, key_line = _token_signature(kind)
    parse_public_key(key_line)  # haios validate accepts the key
    assert _openssh_accepts(tmp_path, signature, key_line) and _haios_accepts(signature)
    parsed = verify(signature, MESSAGE, NAMESPACE)
    assert (parsed.sk_flags, parsed.sk_counter) == (0x01, 7)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_a_token_signature_without_a_touch_is_refused(tmp_path: Path, kind: str) -> None:
    """Stricter than ``ssh-keygen -Y verify`` (which reports the flags but accepts the signature), as
    strict as sshd's default for such keys: an override needs a person at the token."""
    signature, key_line = _token_signature(kind, flags=0x04)  # verified by PIN, but nobody touched it
    assert _openssh_accepts(tmp_path, signature, key_line)  # the signature itself is sound
    with pytest.raises(SignatureError, match="user presence"):
        verify(signature, MESSAGE, NAMESPACE)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
@pytest.mark.parametrize("change", ["counter", "flags", "application"])
def test_a_token_signature_with_anything_changed_is_refused_by_both(tmp_path: Path, kind: str, change: str) -> None:
    signature, key_line = _token_signature(kind, flags=0x05)
    blob = bytearray(base64.b64decode("".join(signature.strip().splitlines()[1:-1])))
    if change == "counter":
        blob[-1] ^= 0x01
    elif change == "flags":
        blob[-5] ^= 0x04  # user verified cleared: still touched, but not what the token signed
    else:
        at = blob.index(b"ssh:")
        blob[at + 3] = ord("x")  # the key's application (in the signature's copy of the key)
    forged = armor(bytes(blob))
    if change == "application":  # the key line must match the key inside the signature for OpenSSH
        key = base64.b64decode(key_line.split()[1]).replace(b"ssh:", b"ssx:")
        key_line = f"{key_line.split()[0]} {base64.b64encode(key).decode()}"
    assert not _openssh_accepts(tmp_path, forged, key_line)
    assert not _haios_accepts(forged)


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa"])
def test_an_override_signed_on_a_token_is_valid(repo: Path, cli: Invoke, kind: str) -> None:
    """End to end: a supervisor whose key lives on a token, listed in rbac.yaml, signs an override."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    result = cli("--repo", repo, "override", "new", "--trace", "2-analyze-abc", "--action", "resume", "--reason", "r")
    assert result.exit_code == 0, result.output
    path = repo / "overrides/2-analyze-abc.yaml"
    yaml = YAML(typ="rt")
    doc = yaml.load(path.read_text())
    signature, key_line = _token_signature(kind, message=str(doc["payload"]).encode())
    (repo / "policies/rbac.yaml").write_text(
        "apiVersion: haios/v1\nkind: Rbac\npolicy_version: 1\nsupervisors:\n"
        f"  - name: alice\n    keys:\n      - {key_line} alice@token\n"
    )
    assert cli("--repo", repo, "validate").exit_code == 0
    doc["signatures"].append({"principal": "alice", "sig": LiteralScalarString(signature)})
    with open(path, "w") as fh:
        yaml.dump(doc, fh)
    verified = cli("--repo", repo, "override", "verify", path)
    assert verified.exit_code == 0 and "VALID" in verified.stdout, verified.stdout
