"""An artifact on its way in: a private copy, loaded with the trust it was given.

Registration and the validation of an unregistered candidate (`berth validate model.skops`)
load a file the same way, with the same safety rules: the copy is what is hashed and loaded
(an archive is unpacked into it), a pickle is unpickled only with --trust-pickle and only the
bytes hashed, and a skops file loads the allow-list, the server's BERTH_TRUSTED_TYPES and the
--trust-type types.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from berth.errors import InvalidInput
from berth.registration.staging import private_copy
from berth.registry.artifacts import artifact_sha256, file_sha256
from berth.runtimes import (
    SKOPS_SUFFIX,
    UntrustedArtifact,
    detect_flavor,
    entry_file,
    load_runtime,
    needs_pickle_trust,
    pickle_refusal,
)

if TYPE_CHECKING:  # base imports numpy and pandas, which the runtime brings when it loads
    from berth.runtimes.base import Runtime


@dataclass(frozen=True)
class LoadedArtifact:
    """A private copy of an artifact and the runtime loaded from it."""

    staged: Path
    """The private copy (a file, or a directory for a directory or an archive)."""
    flavor: str
    sha256: str
    """The copy's sha256 (of the file, or of the directory's files)."""
    pickle_sha256: str | None
    """The digest the pickle was unpickled under; None when nothing was unpickled."""
    runtime: Runtime


def missing_artifact(path: Path) -> str:
    """The error for a model path with nothing there."""
    return (
        f"{path.expanduser()} does not exist; pass the path of a model file, directory or archive"
    )


@contextmanager
def loaded_artifact(
    path: Path,
    *,
    flavor: str | None,
    trust_pickle: bool,
    trusted_types: tuple[str, ...],
    server_trusted_types: tuple[str, ...] = (),
) -> Iterator[LoadedArtifact]:
    """Load a private copy of the model file, directory or archive at `path`; the copy is
    removed on exit. `trusted_types` are the caller's --trust-type names (checked already),
    `server_trusted_types` the server's BERTH_TRUSTED_TYPES."""
    source = path.expanduser()
    if not source.exists():
        raise InvalidInput(missing_artifact(source))
    with private_copy(source) as staged:
        flavor = flavor or detect_flavor(staged)
        entry = entry_file(staged, flavor)
        digest = artifact_sha256(staged)
        pickle_sha256 = None
        if needs_pickle_trust(flavor, entry):
            if not trust_pickle:
                raise InvalidInput(pickle_refusal(entry.name))
            pickle_sha256 = digest if entry == staged else file_sha256(entry)
        if trusted_types and (flavor != "sklearn" or entry.suffix.lower() != SKOPS_SUFFIX):
            raise InvalidInput(
                "--trust-type applies to scikit-learn models saved with skops (.skops); "
                f"{entry.name} is not one"
            )
        try:
            runtime = load_runtime(
                flavor,
                entry,
                trusted_types=(*server_trusted_types, *trusted_types),
                pickle_sha256=pickle_sha256,
            )
        except UntrustedArtifact as exc:
            raise InvalidInput(exc.message) from exc
        yield LoadedArtifact(staged, flavor, digest, pickle_sha256, runtime)
