"""Telling a model file from a registry reference on the command line (`berth validate X`).

Model names may hold dots (`churn.v2`), so `model.skops` could be either. The rules, in order:

1. with a folder separator, or starting with `~` or `.`: a path (`./churn`, `build/model.skops`);
2. `NAME:VERSION` or `NAME@ALIAS`: a registered version (a file so named: write `./NAME:3`);
3. not a reference at all (`model v2.skops`): a path;
4. a bare name that is a file or folder here: a path when it ends in a model file's suffix
   (`model.skops`, `candidate.tar.gz`), else ambiguous, refused with how to say which;
5. a bare name ending in a model file's suffix that is not here: a missing file, refused;
6. any other bare name: a registered model (its production alias, else its latest version).
"""

from __future__ import annotations

from pathlib import Path

from berth.errors import InvalidInput
from berth.registry.references import parse_reference


def model_argument(text: str) -> Path | str:
    """A model file, directory or archive to load (a `Path`), or a registry reference."""
    from berth.registry.archives import ARCHIVE_SUFFIXES
    from berth.runtimes import MODEL_FILE_SUFFIXES

    path = Path(text).expanduser()
    if "/" in text or "\\" in text or text.startswith(("~", ".")):
        return path
    try:
        reference = parse_reference(text)
    except InvalidInput:
        return path
    if reference.version is not None or reference.alias is not None:
        return text
    model_file = text.lower().endswith((*MODEL_FILE_SUFFIXES, *ARCHIVE_SUFFIXES))
    if path.exists():
        if model_file:
            return path
        raise InvalidInput(
            f"'{text}' is both a {'folder' if path.is_dir() else 'file'} here and a model name; "
            f"write ./{text} to validate the {'folder' if path.is_dir() else 'file'}, or "
            f"{text}@production (or {text}:VERSION) for the registered model"
        )
    if model_file:
        raise InvalidInput(
            f"there is no file {text} here; give the path of the candidate model file, or "
            f"write {text}@production (or {text}:VERSION) for a registered model of that name"
        )
    return text
