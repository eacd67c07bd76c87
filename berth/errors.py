"""Domain errors. They carry no HTTP status: each edge (api/, cli/) maps them once.

BerthError
├── NotFound              unknown model, version, alias, key
├── InvalidInput          a request or argument that breaks a rule (signature, reference syntax)
├── Conflict              the action clashes with current state (alias points at a version)
├── Unauthenticated       no credentials, or credentials that do not verify
├── Forbidden             valid credentials without the needed scope
├── PayloadTooLarge       a body or batch over the configured limit
├── NotReady              the server or a model is still loading
│   └── DatabaseUnavailable   the registry database cannot be reached (or stays locked)
├── ArtifactIntegrityError  an artifact's bytes do not match its recorded sha256
└── ModelLoadError        a runtime could not load or run an artifact
"""

from __future__ import annotations


class BerthError(Exception):
    """Base of every error Berth raises on purpose; the message is written for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(BerthError):
    pass


class InvalidInput(BerthError):
    pass


class Conflict(BerthError):
    pass


class Unauthenticated(BerthError):
    """`reason` is the RFC 6750 error code for the challenge: `invalid_request` (malformed),
    `invalid_token` (unknown, revoked, expired), or None when no credentials came at all (the
    RFC says a challenge to a caller who sent none carries no error code)."""

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class Forbidden(BerthError):
    pass


class RateLimited(BerthError):
    def __init__(self, message: str, retry_after: float, limit: int, reset: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.limit = limit
        self.reset = reset


class TimedOut(BerthError):
    pass


class PayloadTooLarge(BerthError):
    pass


class NotReady(BerthError):
    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseUnavailable(NotReady):
    """The registry database refused or dropped the connection, or stayed locked or busy past
    its timeout: waiting may help, so edges answer like NotReady (503 with Retry-After). Raised
    only for such outages; a bad statement or a violated constraint keeps its own error."""


class ArtifactIntegrityError(BerthError):
    pass


class ModelLoadError(BerthError):
    pass
