"""The private copy registration works on, so the bytes checked are the bytes stored."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from berth.errors import BerthError, InvalidInput
from berth.registry.archives import is_archive, safe_extract


@contextmanager
def private_copy(source: Path) -> Iterator[Path]:
    """A private copy (mode 0700) of a model file or directory, or an archive's unpacked contents.

    What is hashed, loaded and stored from it cannot change under the caller. Errors raised in
    the block name `source`, never the private copy. The copy is removed on exit.
    """
    with (
        tempfile.TemporaryDirectory(prefix="berth-register-") as private,
        _named_as_given(source, Path(private)),
    ):
        yield _stage(source, Path(private))


@contextmanager
def _named_as_given(source: Path, private: Path) -> Iterator[None]:
    """Errors raised while working on the private copy name `source` instead of the copy."""
    try:
        yield
    except BerthError as exc:
        message = exc.message
        for staged in (private / "artifact", private / source.name, private):
            message = message.replace(str(staged), str(source))
        exc.message = message
        exc.args = (message, *exc.args[1:])
        raise


def _stage(source: Path, private: Path) -> Path:
    """A private copy of a model file or directory, or the unpacked contents of an archive."""
    if is_archive(source):
        return safe_extract(source, private / "artifact")
    try:
        if source.is_dir():
            target = private / "artifact"
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target = private / source.name
            shutil.copyfile(source, target)
    except (OSError, shutil.Error) as exc:
        raise InvalidInput(f"could not read {source}: {exc}") from exc
    return target
