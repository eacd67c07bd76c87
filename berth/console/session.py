"""The console's session cookie: the credential, sealed, with its expiry and CSRF token.

The cookie holds `base64url(nonce | AES-256-GCM(payload))`, where the payload is the API key or
JWT the user signed in with, when the session ends, and the session's CSRF token. The AES key is
derived from the server secret (the one API keys are hashed with), so every replica sharing the
registry opens every session and no table of sessions is needed; the credential is never in the
cookie in clear, and a changed byte fails authentication. The credential is checked again on
every request by the API's own verification: a revoked key or an expired JWT ends the session at
once, whatever its expiry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

COOKIE = "berth_console"
SIGN_IN_COOKIE = "berth_console_sign_in"
"""Holds the sign-in form's CSRF token (double submit) before there is a session."""
SIGN_IN_SECONDS = 600
_CONTEXT = b"berth console session v1"
_NONCE_BYTES = 12
_MAX_COOKIE_CHARS = 8192


@dataclass(frozen=True)
class Session:
    credential: str
    expires_at: float
    """Unix time."""
    csrf: str

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at


def new_session(credential: str, seconds: float) -> Session:
    return Session(credential, time.time() + seconds, new_token())


def new_token() -> str:
    return secrets.token_urlsafe(32)


class SessionSealer:
    """Seals and opens sessions with a key derived from the server secret."""

    def __init__(self, server_secret: bytes) -> None:
        key = hmac.new(server_secret, _CONTEXT, hashlib.sha256).digest()
        self._aead = AESGCM(key)

    def seal(self, session: Session) -> str:
        payload = json.dumps(
            {"c": session.credential, "e": session.expires_at, "t": session.csrf},
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, payload, _CONTEXT)
        return base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    def open(self, cookie: str | None) -> Session | None:
        """The session, or None for a missing, altered, foreign or expired cookie."""
        if not cookie or len(cookie) > _MAX_COOKIE_CHARS:
            return None
        try:
            sealed = base64.urlsafe_b64decode(cookie + "=" * (-len(cookie) % 4))
            nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
            document = json.loads(self._aead.decrypt(nonce, body, _CONTEXT))
            session = Session(str(document["c"]), float(document["e"]), str(document["t"]))
        except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
            return None
        return None if session.expired() else session


def same_token(expected: str | None, presented: str | None) -> bool:
    """Constant-time comparison of CSRF tokens; a missing one never matches."""
    if not expected or not presented:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())
