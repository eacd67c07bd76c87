"""Who is calling (API key, JWT, or dev mode), their rate limits, and failed attempts audited."""

from __future__ import annotations

from starlette.requests import Request

from berth.errors import Unauthenticated
from berth.observability import tracing
from berth.security.auth import DEV_PRINCIPAL, KeyVerifier, Principal
from berth.security.config import RateLimitConfig
from berth.security.jwt import JwtVerifier, looks_like_jwt
from berth.security.ratelimit import Decision, RateLimiter, check, parse_rate
from berth.store.audit import AuditEvent, AuditQueue

RATE_STATE = "rate_limit"


class Authenticator:
    def __init__(
        self,
        rates: RateLimitConfig,
        keys: KeyVerifier | None,
        jwt: JwtVerifier | None,
        limiter: RateLimiter,
        audit: AuditQueue | None,
    ) -> None:
        """`keys=None` means dev mode: every caller is trusted (and limited by address)."""
        self.rates = rates
        self.keys = keys
        self.jwt = jwt
        self.limiter = limiter
        self.audit = audit

    async def principal(self, request: Request) -> Principal:
        return await self.authenticate(request, presented_credentials(request))

    async def authenticate(self, request: Request, credentials: str | None) -> Principal:
        """`principal` for credentials carried another way (the console's session cookie):
        the same verification, rate limit and audit of failures as a header's."""
        if self.keys is None:
            await self.limit_address(request)
            return DEV_PRINCIPAL
        try:
            with tracing.span("auth"):
                principal = await self._verify(credentials)
        except Unauthenticated as exc:
            self._audit_failure(request, exc)
            raise
        await self._limit(
            request,
            [("key", f"key:{principal.name}", principal.rate or self.rates.default_key_rate)],
        )
        return principal

    async def _verify(self, credentials: str | None) -> Principal:
        if credentials is not None and self.jwt is not None and looks_like_jwt(credentials):
            return await self.jwt.verify(credentials)
        return await self.keys.verify(credentials) if self.keys else DEV_PRINCIPAL

    async def limit_model(self, request: Request, model: str) -> None:
        await self._limit(request, [("model", f"model:{model}", self.rates.model_rates.get(model))])

    async def limit_address(self, request: Request) -> None:
        await self._limit(
            request,
            [("address", f"address:{client_address(request)}", self.rates.open_route_rate)],
        )

    async def _limit(self, request: Request, wanted: list[tuple[str, str, str | None]]) -> None:
        checks = [(kind, bucket, parse_rate(rate)) for kind, bucket, rate in wanted if rate]
        if not checks:
            return
        decision = await check(self.limiter, checks)
        _remember(request, decision)

    def _audit_failure(self, request: Request, exc: Unauthenticated) -> None:
        if self.audit is None:
            return
        self.audit.put(
            AuditEvent(
                actor="anonymous",
                action="auth.failure",
                target=f"{request.method} {request.url.path}",
                outcome="refused",
                address=client_address(request),
                detail={"reason": exc.reason, "message": exc.message},
            )
        )


def _remember(request: Request, decision: Decision) -> None:
    """Keep the tightest decision of this request for the RateLimit-* response headers."""
    earlier: Decision | None = getattr(request.state, RATE_STATE, None)
    if earlier is None or decision.remaining < earlier.remaining:
        setattr(request.state, RATE_STATE, decision)


def presented_credentials(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def client_address(request: Request) -> str:
    """The caller's address; behind a trusted proxy uvicorn has already applied X-Forwarded-For."""
    return request.client.host if request.client else "unknown"
