"""What people ask of API keys: the admin request bodies of `POST /api/v1/keys` and of a
rotation, declared once for the API, its OpenAPI document and `berth keys`."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial
from typing import Annotated, Any, ClassVar

from pydantic import Field

from berth.durations import parse_duration
from berth.registry.references import NAME_PATTERN, check_name
from berth.request_model import CheckedBy, Duration, RequestModel, Text
from berth.security.scopes import DEFAULT_SCOPES


class KeyRequest(RequestModel):
    """Create an API key; its secret is in the answer only."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "name": "web",
        "scopes": ["predict:churn"],
        "expires": "90d",
    }

    name: Annotated[
        str, CheckedBy(partial(check_name, "key"), {"pattern": f"^{NAME_PATTERN}$"})
    ] = Field(description="A unique name for the key.")
    scopes: list[Text] = Field(
        list(DEFAULT_SCOPES),
        description="e.g. predict, read, admin, or predict:MODEL; default predict and read.",
    )
    expires: Duration | None = Field(None, description="Lifetime, e.g. 90d; no expiry if absent.")
    rate: Text | None = Field(
        None,
        description="The key's own rate limit: a number of requests per s, m, h or d, e.g. "
        "100/s; the server's default if absent.",
    )

    def expires_at(self, now: datetime) -> datetime | None:
        return now + parse_duration(self.expires) if self.expires else None


class RotateRequest(RequestModel):
    """Give a key a new secret; the old one keeps working for the grace period."""

    EXAMPLE: ClassVar[dict[str, Any]] = {"grace": "1h"}

    grace: Duration = Field("1h", description="How long the old secret keeps working.")

    def grace_period(self) -> timedelta:
        return parse_duration(self.grace)
