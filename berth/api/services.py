"""What the routes need, built once per process and kept on `app.state.services`."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from berth.api.auth import Authenticator
from berth.config import Settings
from berth.registry.service import Registry
from berth.security.keys import KeyService
from berth.serving.admission import ConcurrencyCap
from berth.serving.dataplane import DataPlane
from berth.store.audit import AuditQueue


@dataclass(frozen=True)
class Services:
    settings: Settings
    registry: Registry
    dataplane: DataPlane
    keys: KeyService
    auth: Authenticator
    audit: AuditQueue
    cap: ConcurrencyCap
    """Concurrent predictions of this process, over every transport."""


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
