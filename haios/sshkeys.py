"""OpenSSH public keys: parsing a key line into its type, wire blob and fingerprint.

Supervisors' keys in ``policies/rbac.yaml`` and node host keys are OpenSSH public keys. The parser
checks the structure fully (the blob's own type string, every field's length, nothing left over) so
that a key that is listed but can never verify anything is caught by ``haios validate``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from typing import Any

_EC_POINT_LENGTH = {"nistp256": 65, "nistp384": 97, "nistp521": 133}
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 16384  # OpenSSH's own limit (SSH_RSA_MAXIMUM_MODULUS_SIZE)


@dataclass(frozen=True)
class PublicKey:
    """A parsed OpenSSH public key."""

    key_type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """The SHA256 fingerprint as ``ssh-keygen -l`` prints it (``SHA256:`` + unpadded base64)."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    def line(self) -> str:
        """The key as an OpenSSH public key line (without the comment)."""
        return f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def string(self, what: str) -> bytes:
        if self.pos + 4 > len(self.data):
            raise ValueError(f"key blob ends before its {what}")
        (length,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        if length > len(self.data) - self.pos:
            raise ValueError(f"key blob's {what} runs past its end")
        value = self.data[self.pos : self.pos + length]
        self.pos += length
        return value

    def mpint(self, what: str) -> int:
        raw = self.string(what)
        if raw and raw[0] & 0x80:
            raise ValueError(f"key blob's {what} is negative")
        return int.from_bytes(raw, "big")

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"key blob has {len(self.data) - self.pos} unexpected trailing bytes")


def _check_ec(reader: _Reader, key_type: str) -> None:
    curve = reader.string("curve name").decode("ascii", "replace")
    if curve not in _EC_POINT_LENGTH:
        raise ValueError(f"unknown curve {curve[:32]!r} (nistp256, nistp384 or nistp521)")
    if key_type not in (f"ecdsa-sha2-{curve}", f"sk-ecdsa-sha2-{curve}@openssh.com"):
        raise ValueError(f"curve {curve} does not match key type {key_type}")
    point = reader.string("public point")
    if len(point) != _EC_POINT_LENGTH[curve] or point[0] != 4:
        raise ValueError(f"public point is not an uncompressed {curve} point")
    try:
        ec_public_key(curve, point)
    except ValueError:
        raise ValueError(f"public point is not on the {curve} curve") from None


def ec_public_key(curve: str, point: bytes) -> Any:
    """The ``cryptography`` public key of an uncompressed ``point`` on the OpenSSH ``curve``
    (nistp256/384/521); ValueError when the point is not on it."""
    from cryptography.hazmat.primitives.asymmetric import ec

    curves: dict[str, ec.EllipticCurve] = {
        "nistp256": ec.SECP256R1(),
        "nistp384": ec.SECP384R1(),
        "nistp521": ec.SECP521R1(),
    }
    return ec.EllipticCurvePublicKey.from_encoded_point(curves[curve], point)


def parse_blob(key_type: str, blob: bytes) -> None:
    """Check that ``blob`` is a well-formed public key of ``key_type``; raise ValueError if not."""
    reader = _Reader(blob)
    inner = reader.string("type").decode("ascii", "replace")
    if inner != key_type:
        raise ValueError(f"key line says {key_type} but its blob holds {inner}")
    if key_type == "ssh-ed25519":
        if len(reader.string("public key")) != 32:
            raise ValueError("ed25519 public key is not 32 bytes")
    elif key_type == "sk-ssh-ed25519@openssh.com":
        if len(reader.string("public key")) != 32:
            raise ValueError("ed25519 public key is not 32 bytes")
        reader.string("application")
    elif key_type == "ssh-rsa":
        exponent = reader.mpint("exponent")
        modulus = reader.mpint("modulus")
        if exponent < 3 or exponent % 2 == 0:
            raise ValueError("RSA exponent is invalid")
        if modulus.bit_length() > MAX_RSA_BITS:
            raise ValueError(f"RSA key has {modulus.bit_length()} bits; at most {MAX_RSA_BITS} are supported")
        if modulus.bit_length() < MIN_RSA_BITS:
            raise ValueError(f"RSA key has {modulus.bit_length()} bits; at least {MIN_RSA_BITS} are required")
    elif key_type in ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"):
        _check_ec(reader, key_type)
    elif key_type == "sk-ecdsa-sha2-nistp256@openssh.com":
        _check_ec(reader, key_type)
        reader.string("application")
    else:
        raise ValueError(f"unsupported key type {key_type}")
    reader.done()


def parse_public_key(line: str) -> PublicKey:
    """Parse an OpenSSH public key line ``TYPE BASE64 [COMMENT]``; raise ValueError saying why not.

    >>> parse_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA x").comment
    'x'
    """
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError("expected 'TYPE BASE64 [COMMENT]'")
    key_type, encoded = parts[0], parts[1]
    comment = parts[2] if len(parts) == 3 else ""
    try:
        blob = base64.b64decode(encoded.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("the key's base64 part does not decode") from exc
    parse_blob(key_type, blob)
    return PublicKey(key_type, blob, comment)
