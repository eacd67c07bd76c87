"""`berth build` in remote mode: what it deploys, read through a server's admin API.

A CI runner holds an API key, not the registry's database credentials. The version comes as
its full record (`GET .../versions/N/record`: the bundle manifest is made from it as local mode
makes it from the registry) and its artifact is downloaded (`GET .../versions/N/artifact`),
hashed as it arrives and refused unless it is the version's sha256. Endpoints and schedules
come from their admin routes. The key needs the admin scope: the artifact is the model itself.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from berth.cli.remote import Remote, path
from berth.cli.upload import progress
from berth.deploy.source import BatchSchedule
from berth.errors import ArtifactIntegrityError
from berth.registry.artifact_transfer import KIND_HEADER, SHA256_HEADER, receive
from berth.registry.endpoints import RouteSpec
from berth.registry.version_record import version_from_record
from berth.registry.versions import VersionInfo

_CHUNK = 1024 * 1024


class RemoteSource:
    """A `BuildSource` over the admin API of the server `berth` is logged in to."""

    def __init__(self, server: Remote) -> None:
        self.server = server

    def model(self, name: str) -> tuple[Mapping[str, int], Sequence[int]]:
        document = self.server.get(path("models", name))
        return document["aliases"], [int(v["version"]) for v in document["versions"]]

    def version(self, model: str, number: int) -> VersionInfo:
        return version_from_record(
            self.server.get(path("models", model, "versions", number, "record"))
        )

    def endpoint(self, name: str) -> tuple[RouteSpec, ...]:
        document = self.server.get(path("endpoints", name))
        return tuple(RouteSpec.from_dict(route) for route in document["routes"])

    def schedules(self) -> list[BatchSchedule]:
        document = self.server.get(path("schedules"))
        return [BatchSchedule.from_dict(s) for s in document["schedules"] if s["enabled"]]

    def fetch_artifact(self, version: VersionInfo, folder: Path) -> None:
        route = path("models", version.model, "versions", version.number, "artifact")
        with self.server.download(route) as response:
            sent = response.headers.get(SHA256_HEADER)
            if sent != version.artifact.sha256:
                raise ArtifactIntegrityError(
                    f"{self.server.url} sent an artifact with sha256 {sent} for {version.ref}, "
                    f"whose sha256 is {version.artifact.sha256}; nothing was kept, try again"
                )
            total = int(response.headers.get("content-length", 0))
            with (
                progress(f"Downloading {version.ref}", total) as (advance, _describe),
                tempfile.TemporaryDirectory(prefix=".berth-download-", dir=folder.parent) as tmp,
            ):
                receive(
                    response.iter_bytes(_CHUNK),
                    response.headers.get(KIND_HEADER, ""),
                    version.artifact,
                    folder,
                    scratch=Path(tmp),
                    advance=advance,
                )
