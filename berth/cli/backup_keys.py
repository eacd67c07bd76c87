"""Encrypted backups from the command line: `berth backup key new`, and the key option (and
BERTH_BACKUP_KEY) the other backup commands read."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.context import err_console

if TYPE_CHECKING:
    from berth.backup.crypto import BackupKey

KEY_HELP = (
    "A file holding the backup key: 32 random bytes as 64 hex digits or base64 (make one with "
    "`berth backup key new > backup.key`). Default: the BERTH_BACKUP_KEY variable; with "
    "neither, the backup is not encrypted and leaves the server secret out."
)


KEY_FILE: Any = typer.Option(None, "--encryption-key-file", help=KEY_HELP)


def backup_key(file: Path | None) -> BackupKey | None:
    """The key given (file first, then BERTH_BACKUP_KEY), or None; one clear error if bad."""
    from berth.backup.crypto import load_key

    return load_key(file)


key_app = typer.Typer(help="Keys that encrypt backups.", no_args_is_help=True)


@key_app.command("new")
def new_key() -> None:
    """Print a new random backup key (base64 of 32 bytes) on standard output.

    Keep it apart from the backups (a secret manager, another machine): without it an
    encrypted backup cannot be restored, and with it anyone can read one.

    Example: berth backup key new > backup.key && chmod 600 backup.key
    """
    from berth.backup.crypto import new_key_text, parse_key

    text = new_key_text()
    typer.echo(text)
    key_id = parse_key(text, "the new key").key_id
    err_console.print(
        f"backup key {key_id}: keep it safe and apart from the backups; pass it with "
        "--encryption-key-file FILE or BERTH_BACKUP_KEY",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def register(backup_app: typer.Typer) -> None:
    """Add `berth backup key` to `berth backup`."""
    backup_app.add_typer(key_app, name="key")
