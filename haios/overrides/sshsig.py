"""SSH signatures (OpenSSH's SSHSIG format, ``ssh-keygen -Y sign``), made and checked with
``cryptography``.

Armored, a signature is base64 between ``-----BEGIN SSH SIGNATURE-----`` and ``-----END SSH
SIGNATURE-----``. Inside: the magic ``SSHSIG``, version 1, the signer's public key, the namespace, a
reserved string, the hash algorithm (sha256 or sha512) and the signature. What is signed is the
magic, the namespace, the reserved string, the hash algorithm and the hash of the message — never
the message itself, so a signature for one namespace (``git``, ``file``) is worthless in another.

Only what ``ssh-keygen`` itself accepts is accepted: version 1, hash sha256 or sha512, key types
ssh-ed25519, ssh-rsa (signature rsa-sha2-256 or rsa-sha2-512, never SHA-1), ecdsa-sha2-nistp256/
384/521 and the FIDO (hardware token) keys sk-ssh-ed25519@openssh.com and
sk-ecdsa-sha2-nistp256@openssh.com, every length checked, no trailing bytes. A token signs its own
wrapping of the data (the key's application, a flags byte and a counter); the touch flag (user
presence) is required, as sshd requires it of such keys by default (``ssh-keygen -Y verify`` only
reports it). Anything else is rejected with the reason — never a crash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SignatureError
from ..sshkeys import PublicKey, _Reader, ec_public_key, parse_blob

MAGIC = b"SSHSIG"
VERSION = 1
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}
_EC_HASH = {"nistp256": "sha256", "nistp384": "sha384", "nistp521": "sha512"}


SK_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")
"""FIDO (hardware token) key types: the token signs its own wrapping of the data (PROTOCOL.u2f)."""
SK_USER_PRESENT = 0x01
"""The flag a token sets when someone touched it; required (an override needs a person at the token)."""


@dataclass(frozen=True)
class Signature:
    """A parsed SSHSIG (with a FIDO key: also the token's flags and signature counter)."""

    public_key: PublicKey
    namespace: str
    hash_algorithm: str
    sig_format: str
    sig_blob: bytes
    sk_flags: int | None = None
    sk_counter: int | None = None

    def signed_data(self, message: bytes) -> bytes:
        return _signed_data(self.namespace, self.hash_algorithm, message)


def _string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def _signed_data(namespace: str, hash_algorithm: str, message: bytes) -> bytes:
    digest = HASHES[hash_algorithm](message).digest()
    return MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_algorithm.encode()) + _string(digest)


def unarmor(text: str) -> bytes:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != BEGIN or lines[-1] != END:
        raise SignatureError(f"not an armored SSH signature (expected {BEGIN} ... {END})")
    try:
        return base64.b64decode("".join(lines[1:-1]).encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise SignatureError("the signature's base64 does not decode") from exc


def armor(blob: bytes) -> str:
    """As ``ssh-keygen`` writes it: base64 in lines of 70 characters."""
    encoded = base64.b64encode(blob).decode("ascii")
    return "\n".join([BEGIN, *(encoded[i : i + 70] for i in range(0, len(encoded), 70)), END]) + "\n"


def parse(text: str) -> Signature:
    """Parse an armored SSHSIG, checking its structure (not yet the signature itself)."""
    blob = unarmor(text)
    if not blob.startswith(MAGIC):
        raise SignatureError("missing the SSHSIG magic preamble")
    reader = _Reader(blob[len(MAGIC) :])
    try:
        if reader.pos + 4 > len(reader.data):
            raise SignatureError("truncated before the version")
        (version,) = struct.unpack_from(">I", reader.data, reader.pos)
        reader.pos += 4
        if version != VERSION:
            raise SignatureError(f"SSHSIG version {version} (only version {VERSION} exists)")
        key_blob = reader.string("public key")
        namespace = reader.string("namespace").decode("utf-8")
        reader.string("reserved")
        hash_algorithm = reader.string("hash algorithm").decode("ascii")
        signature = reader.string("signature")
        reader.done()
        inner = _Reader(key_blob)
        key_type = inner.string("key type").decode("ascii")
        parse_blob(key_type, key_blob)
        sig = _Reader(signature)
        sig_format = sig.string("signature format").decode("ascii")
        sig_blob = sig.string("signature blob")
        flags = counter = None
        if sig_format in SK_TYPES:  # a token's signature: then its flags byte and its counter
            if sig.pos + 5 > len(sig.data):
                raise SignatureError(f"malformed SSHSIG: a {sig_format} signature without its flags and counter")
            flags, counter = sig.data[sig.pos], struct.unpack_from(">I", sig.data, sig.pos + 1)[0]
            sig.pos += 5
        sig.done()
    except SignatureError:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError(f"malformed SSHSIG: {exc}") from None
    if hash_algorithm not in HASHES:
        raise SignatureError(f"hash algorithm {hash_algorithm!r} is not allowed (sha256 or sha512)")
    key = PublicKey(key_type, key_blob, "")
    return Signature(key, namespace, hash_algorithm, sig_format, sig_blob, flags, counter)


def verify(text: str, message: bytes, namespace: str) -> Signature:
    """Parse ``text`` and check that it is a valid signature of ``message`` in ``namespace`` by the
    key it names; returns it (the caller decides whether that key may sign). Raises SignatureError."""
    sig = parse(text)
    if sig.namespace != namespace:
        raise SignatureError(f"namespace {sig.namespace!r}, expected {namespace!r}")
    _check(sig, sig.signed_data(message))
    return sig


def _check(sig: Signature, data: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key_type, reader = sig.public_key.key_type, _Reader(sig.public_key.blob)
    reader.string("key type")
    try:
        if key_type == "ssh-ed25519":
            if sig.sig_format != "ssh-ed25519" or len(sig.sig_blob) != 64:
                raise SignatureError(f"an ed25519 key cannot have made a {sig.sig_format} signature")
            ed25519.Ed25519PublicKey.from_public_bytes(reader.string("public key")).verify(sig.sig_blob, data)
        elif key_type == "ssh-rsa":
            algorithm = {"rsa-sha2-256": hashes.SHA256(), "rsa-sha2-512": hashes.SHA512()}.get(sig.sig_format)
            if algorithm is None:
                raise SignatureError(f"RSA signature format {sig.sig_format!r} is not allowed (rsa-sha2-256/512)")
            e, n = reader.mpint("exponent"), reader.mpint("modulus")
            public = rsa.RSAPublicNumbers(e, n).public_key()
            public.verify(sig.sig_blob, data, padding.PKCS1v15(), algorithm)
        elif key_type in SK_TYPES:
            _check_sk(sig, reader, data)
        elif key_type.startswith("ecdsa-sha2-"):
            curve_name = key_type.removeprefix("ecdsa-sha2-")
            if sig.sig_format != key_type:
                raise SignatureError(f"an {key_type} key cannot have made a {sig.sig_format} signature")
            reader.string("curve")
            point = reader.string("point")
            public_ec = ec_public_key(curve_name, point)
            rs = _Reader(sig.sig_blob)
            r, s = rs.mpint("r"), rs.mpint("s")
            rs.done()
            digest = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
            public_ec.verify(encode_dss_signature(r, s), data, ec.ECDSA(digest[_EC_HASH[curve_name]]))
        else:
            raise SignatureError(f"key type {key_type} is not supported for signatures")
    except InvalidSignature:
        raise SignatureError("the signature does not match the payload (tampered, or another key)") from None
    except ValueError as exc:
        if isinstance(exc, SignatureError):
            raise
        raise SignatureError(f"malformed {key_type} signature: {exc}") from None


def sk_signed_data(application: bytes, flags: int, counter: int, data: bytes) -> bytes:
    """What a FIDO token signs for ``data`` (PROTOCOL.u2f): SHA-256 of the key's application, the
    flags byte, the counter, and SHA-256 of the data."""
    return (
        hashlib.sha256(application).digest()
        + bytes([flags])
        + struct.pack(">I", counter)
        + hashlib.sha256(data).digest()
    )


def _check_sk(sig: Signature, reader: _Reader, data: bytes) -> None:
    """A FIDO key's signature, checked as OpenSSH checks it: the format matches the key, the token
    signed its wrapping of the data with the key's application, and it saw someone's touch."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    key_type = sig.public_key.key_type
    if sig.sig_format != key_type or sig.sk_flags is None or sig.sk_counter is None:
        raise SignatureError(f"a {key_type} key cannot have made a {sig.sig_format} signature")
    if key_type == "sk-ssh-ed25519@openssh.com":
        public = reader.string("public key")
        application = reader.string("application")
        if len(sig.sig_blob) != 64:
            raise SignatureError("an ed25519 token signature is not 64 bytes")
        signed = sk_signed_data(application, sig.sk_flags, sig.sk_counter, data)
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(sig.sig_blob, signed)
    else:
        reader.string("curve")
        point = reader.string("point")
        application = reader.string("application")
        rs = _Reader(sig.sig_blob)
        r, s = rs.mpint("r"), rs.mpint("s")
        rs.done()
        public_ec = ec_public_key("nistp256", point)
        signed = sk_signed_data(application, sig.sk_flags, sig.sk_counter, data)
        public_ec.verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))
    if not sig.sk_flags & SK_USER_PRESENT:  # checked after the signature: the flags are signed too
        raise SignatureError("the hardware key signed without anyone touching it (user presence not asserted)")


def sign(message: bytes, key_path: Path, namespace: str, *, hash_algorithm: str = "sha512") -> str:
    """Sign ``message`` with the OpenSSH private key in ``key_path`` (unencrypted; for a key in an
    agent or on hardware, use ``ssh-keygen -Y sign``, which writes the same format)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if hash_algorithm not in HASHES:
        raise SignatureError(f"hash algorithm {hash_algorithm!r} is not allowed (sha256 or sha512)")
    try:
        private = serialization.load_ssh_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{key_path}: not an unencrypted OpenSSH private key ({exc})") from None
    public_line = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    key_type, encoded = public_line.decode().split()[:2]
    key_blob = base64.b64decode(encoded)
    data = _signed_data(namespace, hash_algorithm, message)
    if isinstance(private, ed25519.Ed25519PrivateKey):
        sig_format, sig_blob = "ssh-ed25519", private.sign(data)
    elif isinstance(private, rsa.RSAPrivateKey):
        sig_format, sig_blob = "rsa-sha2-512", private.sign(data, padding.PKCS1v15(), hashes.SHA512())
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        curve_name = key_type.removeprefix("ecdsa-sha2-")
        digest = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512()}
        r, s = decode_dss_signature(private.sign(data, ec.ECDSA(digest[_EC_HASH[curve_name]])))
        sig_format, sig_blob = key_type, _string(_mpint(r)) + _string(_mpint(s))
    else:
        raise SignatureError(f"{key_path}: key type {key_type} cannot sign overrides")
    blob = (
        MAGIC
        + struct.pack(">I", VERSION)
        + _string(key_blob)
        + _string(namespace.encode())
        + _string(b"")
        + _string(hash_algorithm.encode())
        + _string(_string(sig_format.encode()) + _string(sig_blob))
    )
    return armor(blob)


def _mpint(value: int) -> bytes:
    """An SSH mpint's bytes: minimal big-endian, a leading zero when the high bit is set."""
    if value == 0:
        return b""
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return b"\0" + raw if raw[0] & 0x80 else raw
