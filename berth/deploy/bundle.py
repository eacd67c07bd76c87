"""A model baked into a bundle: the version's artifact as stored, and a manifest to register it again.

Layout of the folder (`model/` in a bundle, `/opt/berth/model` in the image):

    berth-bundle.json     name, version, flavor, sha256, signature, trust, ... (`Manifest`)
    artifact/<files>      the artifact's files exactly as the registry stores them

`bake` writes it from a registered version (read from the registry, or downloaded through the
API in remote mode). `install_bundle` is what `berth serve --bundle` runs when the container
starts: it verifies the files against the manifest's sha256 (and refuses to start on a
mismatch), registers the version unless the registry already holds a
version of that model with the same sha256, and returns the reference to serve. Replicas that
start together register it once: the registration runs under a lease in the registry database,
and whoever does not hold it waits for the version to appear.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from berth import __version__
from berth.errors import ArtifactIntegrityError, InvalidInput, NotFound, NotReady
from berth.registration.service import RegisterRequest, register
from berth.registry.artifacts import artifact_sha256
from berth.registry.service import Registry
from berth.registry.signature import TENSOR_DTYPES, Signature
from berth.registry.versions import VersionInfo
from berth.store.lease import Lease, process_holder

log = logging.getLogger("berth.deploy")

MANIFEST = "berth-bundle.json"
ARTIFACT = "artifact"
FORMAT = 1
INSTALL_WAIT_SECONDS = 240.0
"""How long a replica waits for another one to register the bundle before giving up (less
than the Deployment's startup probe allows, so the probe never kills a waiting pod)."""
_LEASE_SECONDS = 300.0
_POLL_SECONDS = 0.25


@dataclass(frozen=True)
class Manifest:
    """What `berth-bundle.json` holds: enough to register the version in another registry."""

    model: str
    version: int
    flavor: str
    sha256: str
    entry: str
    """The artifact's file name ('' when the artifact is a directory)."""
    is_directory: bool
    size_bytes: int
    signature: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    description: str = ""
    example: list[Any] | None = None
    trusted_types: list[str] = field(default_factory=list)
    pickle_trusted: bool = False
    reference_stats: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    built_from: str = ""
    """The reference `berth build` was given."""
    built_at: str = ""
    berth_version: str = __version__
    format: int = FORMAT

    @property
    def source(self) -> str:
        return f"{self.model}:{self.version}"

    def artifact_path(self, folder: Path) -> Path:
        root = folder / ARTIFACT
        return root if self.is_directory else root / self.entry

    @classmethod
    def of(cls, version: VersionInfo, built_from: str) -> Manifest:
        return cls(
            model=version.model,
            version=version.number,
            flavor=version.flavor,
            sha256=version.artifact.sha256,
            entry=version.artifact.entry,
            is_directory=version.artifact.is_directory,
            size_bytes=version.artifact.size_bytes,
            signature=version.signature.to_dict(),
            metrics=dict(version.metrics),
            tags=dict(version.tags),
            description=version.description,
            example=version.example,
            trusted_types=list(version.trusted_types),
            pickle_trusted=version.pickle_trusted,
            reference_stats=version.reference_stats,
            lineage=version.lineage.to_dict() if version.lineage else None,
            built_from=built_from,
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        if not path.is_file():
            raise InvalidInput(
                f"{folder} is not a model bundle: it has no {MANIFEST}; pass the model/ folder "
                "of a `berth build` bundle (/opt/berth/model in its image)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise InvalidInput(
                    f"{path} has bundle format {data.get('format')!r}; this Berth reads format "
                    f"{FORMAT}: rebuild the bundle with `berth build` of this version"
                )
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidInput(
                f"{path} is not a valid bundle manifest ({exc}); rebuild the bundle"
            ) from exc


# baking ------------------------------------------------------------------------------------


class ArtifactSource(Protocol):
    def fetch_artifact(self, version: VersionInfo, folder: Path) -> None:
        """Write the version's verified artifact into the empty `folder`: the file as
        `version.artifact.entry`, or the directory's files."""


def bake(source: ArtifactSource, version: VersionInfo, folder: Path, built_from: str) -> Manifest:
    """Write the version's verified artifact and its manifest into `folder` (created).

    The artifact comes from the registry (local mode) or is downloaded through the API (remote
    mode); either way the files and the manifest are the same.
    """
    target = folder / ARTIFACT
    target.mkdir(parents=True)
    source.fetch_artifact(version, target)
    _readable(target)
    manifest = Manifest.of(version, built_from)
    verify(folder, manifest)
    (folder / MANIFEST).write_text(
        json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return manifest


def _readable(folder: Path) -> None:
    """Files 0644 and folders 0755, whatever the store or the download gave them: the image
    copies the modes, and its server runs as a user who does not own them."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def verify(folder: Path, manifest: Manifest) -> None:
    """Refuse a bundle whose files are not the ones the manifest names (by sha256)."""
    path = manifest.artifact_path(folder)
    actual = artifact_sha256(path) if path.exists() else "missing"
    if actual != manifest.sha256:
        raise ArtifactIntegrityError(
            f"model bundle {folder} fails its sha256 check (expected {manifest.sha256}, got "
            f"{actual}): its files changed after `berth build`. Refusing to serve it; rebuild "
            "the image from the bundle and never edit model/"
        )


# installing --------------------------------------------------------------------------------


def install_bundle(
    registry: Registry,
    folder: Path,
    wait_seconds: float = INSTALL_WAIT_SECONDS,
    *,
    trust_pickle: bool = False,
) -> str:
    """Verify the bundle in `folder`, register it if new, and return the reference to serve.

    Idempotent: a registry that already holds a version of the model with the bundle's sha256
    gets no new version. Its artifact is stored again (a no-op when present), so a replica
    whose artifact store is local (an emptyDir) can load a version another replica registered.
    """
    folder = folder.expanduser()
    manifest = Manifest.read(folder)
    verify(folder, manifest)
    if manifest.pickle_trusted and not trust_pickle:
        # The sha256 above only proves the files match the manifest that sits beside them; who
        # wrote both is for the operator to vouch for (the image's command does, with the flag).
        raise InvalidInput(
            f"bundle {manifest.source} holds a pickle, which runs code when loaded; serve it "
            "only from an image you built, with `berth serve --bundle DIR --trust-pickle`"
        )
    deadline = time.monotonic() + wait_seconds
    # A holder of this call's own: two installs in one process must not share the lease.
    holder = f"{process_holder()[:119]}:{secrets.token_hex(4)}"
    lease = Lease(registry.db, f"bundle:{manifest.sha256[:56]}", holder, _LEASE_SECONDS)
    while True:
        found = _registered(registry, manifest)
        if found is not None:
            registry.store.put(manifest.artifact_path(folder))
            return found.ref
        if lease.acquire():
            try:
                return _install(registry, folder, manifest)
            finally:
                lease.release()
        if time.monotonic() > deadline:
            raise NotReady(
                f"another replica has been registering bundle {manifest.source} for over "
                f"{wait_seconds:.0f}s; check its log, or restart once it is gone"
            )
        time.sleep(_POLL_SECONDS)


def _install(registry: Registry, folder: Path, manifest: Manifest) -> str:
    found = _registered(registry, manifest)  # registered between our look and the lease
    if found is not None:
        registry.store.put(manifest.artifact_path(folder))
        return found.ref
    with tempfile.TemporaryDirectory(prefix="berth-bundle-") as scratch:
        request = _request(manifest, folder, Path(scratch))
        version = register(registry, request)
    if version.artifact.sha256 != manifest.sha256:  # registration hashes its own copy
        raise ArtifactIntegrityError(
            f"bundle {manifest.source} registered with sha256 {version.artifact.sha256}, not "
            f"the manifest's {manifest.sha256}; rebuild the bundle"
        )
    log.info("registered bundle %s as %s", manifest.source, version.ref)
    return version.ref


def _registered(registry: Registry, manifest: Manifest) -> VersionInfo | None:
    """The oldest version of the model with the bundle's bytes, if there is one."""
    try:
        model = registry.get_model(manifest.model)
    except NotFound:
        return None
    return next((v for v in model.versions if v.artifact.sha256 == manifest.sha256), None)


def _request(manifest: Manifest, folder: Path, scratch: Path) -> RegisterRequest:
    signature = scratch / "signature.json"
    signature.write_text(json.dumps(manifest.signature), encoding="utf-8")
    return RegisterRequest(
        name=manifest.model,
        path=manifest.artifact_path(folder),
        flavor=manifest.flavor,
        sample=_sample(manifest, scratch),
        signature=signature,
        metrics=manifest.metrics,
        tags={**manifest.tags, "bundle": manifest.source},
        description=manifest.description,
        # Trusted when the source version was registered and vouched for again by the
        # operator's --trust-pickle (install_bundle); the sha256 is checked on every load.
        trust_pickle=manifest.pickle_trusted,
        trusted_types=tuple(manifest.trusted_types),
        reference_stats=manifest.reference_stats,
        actor="berth-bundle",
    )


def _sample(manifest: Manifest, scratch: Path) -> Path | None:
    """The version's example rows as a sample file, so the copy keeps its warm-up example.

    The model predicts on it before it is registered, which also proves the image can run it.
    """
    rows = manifest.example
    if not rows:
        return None
    if all(isinstance(row, dict) for row in rows):
        path = scratch / "example.json"
        path.write_text(json.dumps(rows), encoding="utf-8")
        return path
    signature = Signature.from_dict(manifest.signature)
    dtype = signature.inputs[0].dtype if len(signature.inputs) == 1 else None
    if dtype is None or dtype == "string" or dtype not in TENSOR_DTYPES:
        log.info("bundle %s: example rows not kept (no single numeric input)", manifest.source)
        return None
    path = scratch / "example.npy"
    try:
        np.save(path, np.asarray(rows, dtype=dtype), allow_pickle=False)
    except (ValueError, TypeError) as exc:
        log.info("bundle %s: example rows not kept (%s)", manifest.source, exc)
        return None
    return path
