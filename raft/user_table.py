"""The HTTP API's users as the cluster state keeps them: name -> role and password
hash, replicated so that a user logs in on whichever node the browser reaches.

Only the hash is replicated (``scrypt$...``, made where the password was typed:
hacluster.http.passwords), never a password. The checks here are what the state machine
applies on every member, so they are pure and the same everywhere; hacluster.http
imports them so that the API and the state machine agree on what is valid.
"""
from __future__ import annotations

import re

ROLES = ("monitor", "control", "admin")     # lowest first
USER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
# scrypt$<log2 N>$<r>$<p>$<salt>$<key>, base64url without padding
HASH_FORMAT = re.compile(r"^scrypt\$(1[0-9]|20)\$([1-9]|1[0-6])\$([1-4])\$"
                         r"([A-Za-z0-9_-]{16,64})\$([A-Za-z0-9_-]{32,128})$")
MAX_USERS = 1000


def name_error(name: object) -> str | None:
    """Why ``name`` cannot name a user, or None."""
    if not isinstance(name, str) or not USER_NAME.fullmatch(name):
        return f"user name {name!r}: a letter, then up to 63 letters, digits, '_', '.' or '-'"
    return None


def role_error(role: object) -> str | None:
    if role not in ROLES:
        return f"role {role!r}: one of {', '.join(ROLES)}"
    return None


def hash_error(password_hash: object) -> str | None:
    if not isinstance(password_hash, str) or not HASH_FORMAT.fullmatch(password_hash):
        return "password hash: not a scrypt$... hash (hash passwords where they are typed)"
    return None
