"""Test data already on the server: files under BERTH_VALIDATION_DATA_DIR, and nothing else.

A remote caller (an admin key, e.g. a CI runner's) may name test rows that live on the server
instead of uploading them. It names them relative to the folder the operator set aside for
them, and the name is resolved (symbolic links included) before it is read: a name that leads
out of the folder (`../registry.db`, an absolute path, a link to /etc) is refused, so a key
can read no other file of the server through the gates' error messages. Without the setting
the server takes uploaded data only.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from berth.errors import InvalidInput, NotFound

SETTING = "BERTH_VALIDATION_DATA_DIR"


def server_data_file(directory: Path | None, name: str) -> Path:
    """The file `name` (relative, with / between folders) under `directory`."""
    if directory is None:
        raise InvalidInput(
            f"this server takes no test data of its own ({SETTING} is not set); upload the "
            "test rows with --data FILE instead"
        )
    relative = PurePosixPath(name.replace("\\", "/"))
    if (
        not name.strip()
        or relative.is_absolute()
        or ".." in relative.parts
        or "\x00" in name
        or Path(name).drive
    ):
        raise InvalidInput(
            f"server data '{name[:200]}' is not a path inside {SETTING}; give it relative to "
            "that folder, e.g. holdout/churn.csv"
        )
    root = directory.expanduser().resolve()
    path = (root / Path(*relative.parts)).resolve()
    if not path.is_relative_to(root):
        raise InvalidInput(
            f"server data '{name[:200]}' leads out of {SETTING} (through a link); give a file "
            "inside that folder"
        )
    if not path.is_file():
        raise NotFound(
            f"there is no file '{name[:200]}' in the server's {SETTING}; check its name (or "
            "upload the test rows with --data FILE)"
        )
    return path
