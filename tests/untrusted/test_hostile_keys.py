"""SSH keys and signatures an attacker shapes: every one is refused with its reason (ValueError for
a key line, SignatureError for a signature), never a KeyError, an OverflowError or a crash."""

from __future__ import annotations

import base64
import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from untrusted.hostile import KEYS, SIGNATURES

from haios.config import validate_repo
from haios.errors import SignatureError
from haios.overrides.sshsig import MAGIC, parse, verify
from haios.sshkeys import parse_blob, parse_public_key

TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
    "",
)
FIELDS = st.one_of(
    st.binary(max_size=70),
    st.sampled_from([b"", b"nistp256", b"nistp384", b"nistp521", b"nistp9999", b"\x04" + b"\x01" * 64, b"ssh:"]),
    st.sampled_from(TYPES).map(str.encode),
)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


@pytest.mark.parametrize("key", KEYS, ids=[k.name for k in KEYS])
def test_hostile_key_lines_are_refused_with_a_reason(key: Path, repo: Path) -> None:
    line = key.read_text().strip()
    with pytest.raises(ValueError) as caught:
        parse_public_key(line)
    assert str(caught.value)
    rbac = repo / "policies/rbac.yaml"
    rbac.write_text(
        "apiVersion: haios/v1\nkind: Rbac\npolicy_version: 1\nsupervisors:\n"
        f"  - name: mallory\n    keys:\n      - {line}\n"
    )
    problems = [p for p in validate_repo(repo).problems if p.file == "policies/rbac.yaml"]
    assert problems and problems[0].line == 7 and "not a usable SSH public key" in problems[0].message


@pytest.mark.parametrize("signature", SIGNATURES, ids=[s.name for s in SIGNATURES])
def test_hostile_signatures_are_refused_with_a_reason(signature: Path) -> None:
    with pytest.raises(SignatureError) as caught:
        verify(signature.read_text(), b"{}", "haios-override")
    assert str(caught.value)


@settings(max_examples=400)
@given(key_type=st.sampled_from(TYPES), fields=st.lists(FIELDS, max_size=5), tail=st.binary(max_size=3))
def test_property_structured_key_blobs_parse_or_value_error(key_type: str, fields: list[bytes], tail: bytes) -> None:
    blob = b"".join(_string(f) for f in [key_type.encode(), *fields]) + tail
    with contextlib.suppress(ValueError):
        parse_blob(key_type, blob)
    line = f"{key_type or 'x'} {base64.b64encode(blob).decode()}"
    with contextlib.suppress(ValueError):
        parse_public_key(line)


@settings(max_examples=400)
@given(
    version=st.sampled_from([0, 1, 2, 0xFFFFFFFF]),
    key_type=st.sampled_from(TYPES),
    key_fields=st.lists(FIELDS, max_size=4),
    namespace=st.sampled_from([b"haios-override", b"git", b""]),
    hash_algorithm=st.sampled_from([b"sha512", b"sha256", b"sha1", b""]),
    sig_fields=st.lists(FIELDS, max_size=4),
    tail=st.binary(max_size=3),
)
def test_property_structured_sshsig_blobs_verify_or_signature_error(
    version: int,
    key_type: str,
    key_fields: list[bytes],
    namespace: bytes,
    hash_algorithm: bytes,
    sig_fields: list[bytes],
    tail: bytes,
) -> None:
    key = b"".join(_string(f) for f in [key_type.encode(), *key_fields])
    sig = b"".join(_string(f) for f in [key_type.encode(), *sig_fields])
    blob = MAGIC + struct.pack(">I", version) + _string(key) + _string(namespace) + _string(b"")
    blob += _string(hash_algorithm) + _string(sig) + tail
    text = "-----BEGIN SSH SIGNATURE-----\n" + base64.b64encode(blob).decode() + "\n-----END SSH SIGNATURE-----\n"
    for call in (lambda: parse(text), lambda: verify(text, b"{}", "haios-override")):
        with contextlib.suppress(SignatureError):
            call()
