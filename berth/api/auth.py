"""Who is calling: the API key from `X-API-Key` or `Authorization: Bearer`, or dev mode."""

from __future__ import annotations

from starlette.requests import Request

from berth.security.auth import DEV_PRINCIPAL, KeyVerifier, Principal


class Authenticator:
    def __init__(self, verifier: KeyVerifier | None) -> None:
        """`verifier=None` means dev mode: every caller is trusted."""
        self.verifier = verifier

    async def principal(self, request: Request) -> Principal:
        if self.verifier is None:
            return DEV_PRINCIPAL
        return await self.verifier.verify(presented_key(request))


def presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None
