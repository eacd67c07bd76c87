"""Loading a registered version: its verified bytes, with the trust it was registered with.

This is how a version is served: a pickle is unpickled only for a version registered with
--trust-pickle, and only bytes whose sha256 is the one recorded at registration; a skops file
may load the allow-list, the server's BERTH_TRUSTED_TYPES and the version's own --trust-type
types.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from berth.registry.artifacts import entry_sha256
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes import entry_file, load_runtime, needs_pickle_trust

log = logging.getLogger("berth.serving")

if TYPE_CHECKING:  # base imports numpy and pandas, which the runtime brings when it loads
    from berth.runtimes.base import Runtime


def artifact_path(registry: Registry, version: VersionInfo) -> Path:
    """A verified local path of the version's artifact, ready for its runtime."""
    return entry_path(version, registry.store.fetch(version.artifact))


def load_version(registry: Registry, version: VersionInfo) -> Runtime:
    """The version's runtime, loaded from verified bytes with the trust it was registered with."""
    return load_fetched(version, registry.store.fetch(version.artifact), registry.trusted_types)


def load_served(registry: Registry, version: VersionInfo, *, accelerate: bool = True) -> Runtime:
    """The runtime that serves `version`: its accelerated twin when it has a usable one and
    `accelerate` allows it, else the version's own. A twin that cannot be fetched or loaded (a
    store restored without it, a runtime missing) is logged and the version serves as it is."""
    twin = version.accelerated
    if accelerate and twin is not None and twin.artifact is not None:
        try:
            # A twin is one file (berth.optimize.twin stores the .onnx graph itself).
            return load_runtime(twin.flavor, registry.store.fetch(twin.artifact))
        except Exception as exc:  # any failure of the twin leaves the version itself to serve
            log.warning(
                "%s serves as %s: its %s twin did not load (%s: %s)",
                version.ref,
                version.flavor,
                twin.flavor,
                type(exc).__name__,
                exc,
            )
    return load_version(registry, version)


def entry_path(version: VersionInfo, local: Path) -> Path:
    """The file the runtime loads, of a verified local copy `local` of the version's artifact
    (the file itself, or the directory)."""
    return entry_file(local, version.flavor) if version.artifact.is_directory else local


def load_fetched(version: VersionInfo, local: Path, trusted_types: Sequence[str]) -> Runtime:
    """The version's runtime from `local`, a copy of its artifact the caller checked against
    the version's sha256 (the registry's cache, or a download); `trusted_types`: the types
    trusted beside the allow-list and the version's own (BERTH_TRUSTED_TYPES)."""
    entry = entry_path(version, local)
    pickle_sha256 = None
    if version.pickle_trusted and needs_pickle_trust(version.flavor, entry):
        pickle_sha256 = entry_sha256(local, entry, version.artifact)
    return load_runtime(
        version.flavor,
        entry,
        trusted_types=(*trusted_types, *version.trusted_types),
        pickle_sha256=pickle_sha256,
    )
