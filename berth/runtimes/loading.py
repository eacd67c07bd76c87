"""Loading a registered version: its verified bytes, with the trust it was registered with.

This is how a version is served: a pickle is unpickled only for a version registered with
--trust-pickle, and only bytes whose sha256 is the one recorded at registration; a skops file
may load the allow-list, the server's BERTH_TRUSTED_TYPES and the version's own --trust-type
types.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from berth.registry.artifacts import entry_sha256
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes import entry_file, load_runtime, needs_pickle_trust

if TYPE_CHECKING:  # base imports numpy and pandas, which the runtime brings when it loads
    from berth.runtimes.base import Runtime


def artifact_path(registry: Registry, version: VersionInfo) -> Path:
    """A verified local path of the version's artifact, ready for its runtime."""
    return entry_path(version, registry.store.fetch(version.artifact))


def load_version(registry: Registry, version: VersionInfo) -> Runtime:
    """The version's runtime, loaded from verified bytes with the trust it was registered with."""
    return load_fetched(version, registry.store.fetch(version.artifact), registry.trusted_types)


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
