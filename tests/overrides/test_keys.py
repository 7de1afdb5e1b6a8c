"""OpenSSH public key parsing."""

from __future__ import annotations

import base64
import contextlib
import struct

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given
from hypothesis import strategies as st

from haios.sshkeys import parse_public_key


def _line(key: object) -> str:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "make",
    [
        lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
        lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
        lambda: ec.generate_private_key(ec.SECP256R1()).public_key(),
        lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
        lambda: ec.generate_private_key(ec.SECP521R1()).public_key(),
    ],
)
def test_keys_parse_real_keys(make: object) -> None:
    line = _line(make())  # type: ignore[operator]
    key = parse_public_key(f"{line} someone@host")
    assert key.line() == line and key.comment == "someone@host"
    assert key.fingerprint.startswith("SHA256:") and len(key.fingerprint) == 7 + 43


def test_keys_fingerprint_matches_ssh_keygen_format() -> None:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(32)
    key = parse_public_key("ssh-ed25519 " + base64.b64encode(blob).decode())
    import hashlib

    assert key.fingerprint == "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("ssh-ed25519", r"expected 'TYPE BASE64 \[COMMENT\]'"),
        ("ssh-ed25519 !!!!", "base64 part does not decode"),
        (
            "ssh-rsa " + base64.b64encode(struct.pack(">I", 11) + b"ssh-ed25519").decode(),
            "line says ssh-rsa but its blob holds ssh-ed25519",
        ),
        ("ssh-dss " + base64.b64encode(struct.pack(">I", 7) + b"ssh-dss").decode(), "unsupported key type ssh-dss"),
        (
            "ssh-ed25519 "
            + base64.b64encode(struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 31) + bytes(31)).decode(),
            "not 32 bytes",
        ),
        (
            "ssh-ed25519 "
            + base64.b64encode(struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(33)).decode(),
            "1 unexpected trailing bytes",
        ),
    ],
)
def test_keys_malformed_are_refused_with_reason(line: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_public_key(line)


@given(st.text(max_size=300))
def test_property_any_text_parses_or_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_public_key(text)


@given(st.binary(max_size=300))
def test_property_any_blob_parses_or_value_error(blob: bytes) -> None:
    with contextlib.suppress(ValueError):
        parse_public_key("ssh-ed25519 " + base64.b64encode(blob).decode())
