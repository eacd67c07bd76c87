"""Who is calling (API key, JWT, or dev mode), their rate limits, and failed attempts audited.

Transport-neutral underneath: the REST routes pass their `Request`, the gRPC service a `Caller`
built from its call (peer address, method, metadata); both are verified, limited and audited by
the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request

from berth.errors import Unauthenticated
from berth.observability import tracing
from berth.security.auth import DEV_PRINCIPAL, KeyVerifier, Principal
from berth.security.config import RateLimitConfig
from berth.security.jwt_shape import looks_like_jwt
from berth.security.ratelimit import Decision, RateLimiter, check, parse_rate
from berth.store.audit import AuditEvent, AuditQueue

if TYPE_CHECKING:
    from berth.security.jwt import JwtVerifier

RATE_STATE = "rate_limit"


@dataclass
class Caller:
    """One request as authentication sees it, whatever carried it."""

    address: str
    """The peer's address: the bucket of open routes' rate limit, and the audit's `address`."""
    target: str
    """What was called, for the audit trail (`POST /v2/models/iris/infer`, `gRPC ModelInfer`)."""
    decision: Decision | None = None
    """The tightest rate-limit decision so far (for RateLimit-* headers or retry metadata)."""

    def remember(self, decision: Decision) -> None:
        if self.decision is None or decision.remaining < self.decision.remaining:
            self.decision = decision


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
        caller = _LazyCaller(request)
        try:
            return await self._authenticate(caller.get, credentials)
        finally:
            caller.remember()

    async def authenticate_caller(self, caller: Caller, credentials: str | None) -> Principal:
        return await self._authenticate(lambda: caller, credentials)

    async def _authenticate(
        self, caller: Callable[[], Caller], credentials: str | None
    ) -> Principal:
        """`caller()` is called only when it is needed: for a failure's audit or a rate limit."""
        if self.keys is None:
            await self.limit_caller_address(caller())
            return DEV_PRINCIPAL
        try:
            with tracing.span("auth"):
                principal = await self._verify(credentials)
        except Unauthenticated as exc:
            self._audit_failure(caller(), exc)
            raise
        rate = principal.rate or self.rates.default_key_rate
        if rate:
            await self._limit(caller(), [("key", f"key:{principal.name}", rate)])
        return principal

    async def _verify(self, credentials: str | None) -> Principal:
        if credentials is not None and self.jwt is not None and looks_like_jwt(credentials):
            return await self.jwt.verify(credentials)
        return await self.keys.verify(credentials) if self.keys else DEV_PRINCIPAL

    async def limit_model(self, request: Request, model: str) -> None:
        if not self.rates.model_rates.get(model):
            return  # nothing to count (the usual case): no caller to build
        caller = _caller(request)
        try:
            await self.limit_caller_model(caller, model)
        finally:
            _remember(request, caller)

    async def limit_address(self, request: Request) -> None:
        caller = _caller(request)
        try:
            await self.limit_caller_address(caller)
        finally:
            _remember(request, caller)

    async def limit_caller_model(self, caller: Caller, model: str) -> None:
        await self._limit(caller, [("model", f"model:{model}", self.rates.model_rates.get(model))])

    async def limit_caller_address(self, caller: Caller) -> None:
        await self._limit(
            caller, [("address", f"address:{caller.address}", self.rates.open_route_rate)]
        )

    async def _limit(self, caller: Caller, wanted: list[tuple[str, str, str | None]]) -> None:
        checks = [(kind, bucket, parse_rate(rate)) for kind, bucket, rate in wanted if rate]
        if not checks:
            return
        caller.remember(await check(self.limiter, checks))

    def _audit_failure(self, caller: Caller, exc: Unauthenticated) -> None:
        if self.audit is None:
            return
        self.audit.put(
            AuditEvent(
                actor="anonymous",
                action="auth.failure",
                target=caller.target,
                outcome="refused",
                address=caller.address,
                detail={"reason": exc.reason, "message": exc.message},
            )
        )


def _caller(request: Request) -> Caller:
    return Caller(client_address(request), f"{request.method} {request.scope['path']}")


class _LazyCaller:
    """A REST request's `Caller`, built the first time it is asked for (most requests that
    pass authentication never need one)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.caller: Caller | None = None

    def get(self) -> Caller:
        if self.caller is None:
            self.caller = _caller(self.request)
        return self.caller

    def remember(self) -> None:
        if self.caller is not None:
            _remember(self.request, self.caller)


def _remember(request: Request, caller: Caller) -> None:
    """Keep the tightest decision of this request for the RateLimit-* response headers."""
    if caller.decision is None:
        return
    earlier: Decision | None = getattr(request.state, RATE_STATE, None)
    if earlier is None or caller.decision.remaining < earlier.remaining:
        setattr(request.state, RATE_STATE, caller.decision)


def presented_credentials(request: Request) -> str | None:
    return credentials_in(request.headers)


def credentials_in(headers: Mapping[str, str]) -> str | None:
    """An API key (`x-api-key`) or bearer token (`authorization`) from headers or gRPC
    metadata (lower-case names)."""
    key = headers.get("x-api-key")
    if key:
        return key.strip()
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def client_address(request: Request) -> str:
    """The caller's address; behind a trusted proxy uvicorn has already applied X-Forwarded-For."""
    return request.client.host if request.client else "unknown"
