"""Password hashes of the HTTP API's users: scrypt (hashlib), one salt per hash.

Why scrypt from the standard library rather than argon2-cffi: it is a memory-hard KDF
maintained with OpenSSL, needs no new package on every node, and its parameters are
written into each hash, so they can be raised later without breaking stored hashes.

Parameters: N = 2**15, r = 8, p = 1 (about 32 MiB and some 50-100 ms per hash on these
machines: OWASP's recommended minimum for scrypt is N = 2**17 with 128 MiB, or N = 2**15
with r = 8 and p = 3; we keep p = 1 with a per-source and per-user login limit in front,
``login_limit``), a 16-byte random salt, a 32-byte key. Stored as one ASCII string
``scrypt$<log2 N>$<r>$<p>$<salt b64>$<key b64>`` (that string, never the password, is what
the cluster state replicates). Verification compares in constant time.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from raft.user_table import HASH_FORMAT

LOG2_N = 15
R = 8
P = 1
SALT_BYTES = 16
KEY_BYTES = 32
_MAXMEM = 64 << 20
# What a stored hash may look like: raft.user_table.HASH_FORMAT (the Raft command that
# stores it checks it).
MIN_PASSWORD = 8
MAX_PASSWORD = 1024


class PasswordError(ValueError):
    """A password that cannot be used (too short, too long)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password.encode()) > MAX_PASSWORD:
        raise PasswordError(f"a password has at most {MAX_PASSWORD} bytes")


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=1 << log2_n, r=r, p=p,
                          maxmem=_MAXMEM, dklen=KEY_BYTES)


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    """The stored form of ``password`` (PasswordError when it cannot be used)."""
    check_password(password)
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt${log2_n}${R}${P}${_b64(salt)}${_b64(_derive(password, salt, log2_n, R, P))}"


def verify_password(stored: str, password: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (False for a malformed
    hash or an over-long password: never an exception at login)."""
    m = HASH_FORMAT.fullmatch(stored) if isinstance(stored, str) else None
    if m is None or len(password.encode()) > MAX_PASSWORD:
        return False
    log2_n, r, p = int(m[1]), int(m[2]), int(m[3])
    try:
        key = _derive(password, _unb64(m[4]), log2_n, r, p)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(key, _unb64(m[5]))


def fingerprint(stored: str) -> str:
    """A short digest of a stored hash: a session names it, so a changed password (a
    new hash) ends the sessions made with the old one on every node."""
    return hashlib.sha256(stored.encode()).hexdigest()[:16]
