"""Whether a bearer credential has a JWT's shape: the one question every request asks, kept
apart from the verifier (`berth.security.jwt`) so a server with no JWTs configured never imports
PyJWT, cryptography and httpx."""

from __future__ import annotations

import re

_SEGMENT = r"[A-Za-z0-9_-]+={0,2}"
_JWT_SHAPE = re.compile(rf"{_SEGMENT}\.{_SEGMENT}\.(?:{_SEGMENT})?")


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments separated by dots (the signature may be empty).

    Berth API keys (`berth_<id>_<secret>`) contain no dots, so they never match.
    """
    return _JWT_SHAPE.fullmatch(token) is not None
