"""Signed session cookies any member accepts: the key is derived from the cluster
secret (HKDF, its own label), so a browser that logged in on one node keeps its
session when it reaches another after a failover.

A cookie is ``<payload b64>.<HMAC-SHA256 b64>``; the payload (JSON) names the user, the
fingerprint of the password hash the login checked (``passwords.fingerprint``: changing
a password or removing the user ends their sessions everywhere, since every request
checks it against the committed user table), when it was issued and when it expires
(wall clock: sessions cross nodes, whose monotonic clocks differ), and the CSRF token
of the session. The role is *not* in the cookie: it is read from the user table on
every request, so a role changed by an Admin applies at once.

Nothing here is encrypted: the payload holds no secret (the CSRF token is also handed
to the page, which is what it is for), only authenticated.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE = "hacluster_session"
CSRF_COOKIE = "hacluster_csrf"      # readable by the page (not HttpOnly): it sends it back
CSRF_HEADER = "X-CSRF-Token"
LIFETIME_S = 8 * 3600
_INFO = b"hacluster http session v1"
_MAX_COOKIE = 4096


def session_key(cluster_secret: str) -> bytes:
    """The key of the session cookies: the same on every data node, and not the secret
    itself (a leaked cookie key would not drive peer control or replication)."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=_INFO).derive(cluster_secret.encode())


def handoff_key(key: bytes) -> bytes:
    """The key of the console's handoff tokens (``api``: a session on another node
    after a failover), derived from the cookie key: a token the page can read is never
    accepted as a session cookie, nor a cookie as a token."""
    return hmac.new(key, b"hacluster http handoff v1", hashlib.sha256).digest()


@dataclass(frozen=True)
class Session:
    user: str
    password: str       # passwords.fingerprint of the hash the login checked
    issued: float
    expires: float
    csrf: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_session(user: str, password_fingerprint: str, now: float,
                lifetime_s: float = LIFETIME_S) -> Session:
    return Session(user, password_fingerprint, now, now + lifetime_s, secrets.token_urlsafe(24))


def encode(key: bytes, session: Session) -> str:
    payload = _b64(json.dumps({"u": session.user, "p": session.password, "i": session.issued,
                               "e": session.expires, "c": session.csrf},
                              separators=(",", ":"), sort_keys=True).encode())
    return payload + "." + _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def decode(key: bytes, cookie: str, now: float) -> Session | None:
    """The session of a cookie that ``key`` signed and that has not expired, else None."""
    if not cookie or len(cookie) > _MAX_COOKIE or cookie.count(".") != 1:
        return None
    payload, mac = cookie.split(".")
    try:
        good = hmac.compare_digest(_unb64(mac), hmac.new(key, payload.encode(),
                                                          hashlib.sha256).digest())
        if not good:
            return None
        raw = json.loads(_unb64(payload))
        session = Session(str(raw["u"]), str(raw["p"]), float(raw["i"]), float(raw["e"]),
                          str(raw["c"]))
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None
    return session if session.issued <= now + 60 and now < session.expires else None


def csrf_ok(session: Session, token: str | None) -> bool:
    """The request carries its session's CSRF token (header ``X-CSRF-Token``)."""
    return bool(token) and hmac.compare_digest(session.csrf.encode(), (token or "").encode())
