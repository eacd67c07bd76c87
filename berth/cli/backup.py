"""`berth backup`: snapshots of the registry (rows and artifacts) to folders or fsspec URLs,
and their listing, checking and restore."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import typer

from berth.cli import backup_keys, backup_prune
from berth.cli.backup_keys import KEY_FILE, backup_key
from berth.cli.context import console, registry, remote, settings
from berth.errors import BerthError, InvalidInput

app = typer.Typer(help="Back up the registry and restore it.", no_args_is_help=True)


def _echo(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


@app.command("create")
def create(
    to: list[str] = typer.Option(
        ..., "--to", help="A destination: a folder or fsspec URL (repeat for several)."
    ),
    encryption_key_file: Path | None = KEY_FILE,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    job: int | None = typer.Option(
        None, "--job", hidden=True, help="Attach to this queued job record (the scheduler)."
    ),
    schedule: str | None = typer.Option(
        None, "--schedule", hidden=True, help="Record the run as one of this schedule's."
    ),
) -> None:
    """Back up the registry's rows and artifacts to every destination.

    Artifacts a destination already holds are not copied again. A destination that fails gets
    no manifest; the others complete. Each backup is a job: `berth jobs list` shows it. With
    a backup key (--encryption-key-file or BERTH_BACKUP_KEY) everything is encrypted before it
    leaves (AES-256-GCM) and the server secret is included, so API keys work after a restore;
    without one the secret is left out. In remote mode the server's host runs the backup as a
    job: destinations and the key file are paths on that host (its BERTH_BACKUP_KEY else).

    Example: berth backup create --to /mnt/backups --to s3://bucket/berth
    """
    server = remote()
    if server is not None:
        if job is not None or schedule is not None:
            raise InvalidInput(
                "--job and --schedule are set by the scheduler on the server's host; leave "
                "them out in remote mode"
            )
        from berth.cli import remote_backup

        _finish_backup(remote_backup.create(server, to, encryption_key_file), as_json)
        return
    from berth.backup.create import create_backup, take_snapshot
    from berth.backup.secret import current_secret
    from berth.cli.upload import progress
    from berth.jobs.backups import recorded_backup
    from berth.security.config import KeyConfig

    if schedule is not None:
        from berth.jobs.schedules import NAME_PATTERN

        if not re.fullmatch(NAME_PATTERN, schedule):
            raise InvalidInput(f"--schedule '{schedule}' is not a schedule name, e.g. nightly")
    key = backup_key(encryption_key_file)
    found = registry()
    secret = current_secret(KeyConfig.from_settings(settings())) if key else None
    args = [arg for url in to for arg in ("--to", url)]
    if encryption_key_file is not None:
        args += ["--encryption-key-file", str(encryption_key_file)]
    origin = "cli" if schedule is None else f"schedule:{schedule}"
    # The rows are read before the job is recorded: a backup does not hold its own running
    # job (restored, it would show as a backup that never ended).
    taken = take_snapshot(found.db)
    with recorded_backup(found.db, args, origin=origin, job_id=job) as record:
        with progress("Backing up", taken.artifact_bytes) as (advance, _describe):
            report = create_backup(taken, found.store, to, advance, key, secret).to_dict()
        record.report(report)
        _finish_backup(report, as_json)


def _finish_backup(report: dict[str, Any], as_json: bool) -> None:
    """Print the report; a failed destination fails the command (and so the job)."""
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        _print_backup(report)
    failed = [d for d in report["destinations"] if not d["complete"]]
    if failed:
        names = "; ".join(f"{d['url']} ({d['error']})" for d in failed)
        raise BerthError(
            f"backup {report['snapshot']} failed at {names}; the other destinations are "
            "complete: fix the destination and run the backup again"
        )


def _print_backup(report: dict[str, Any]) -> None:
    rows = sum(report["rows"].values())
    _echo(
        f"backup {report['snapshot']} (schema {report['schema_revision']}): {_count(rows, 'row')} in "
        f"{_count(len(report['rows']), 'table')}, {_count(report['artifacts'], 'artifact')} "
        f"({report['artifact_bytes']} bytes)"
    )
    for destination in report["destinations"]:
        if destination["complete"]:
            _echo(
                f"  {destination['url']}: complete, copied "
                f"{_count(destination['objects_copied'], 'object')} ({destination['bytes_copied']} bytes), "
                f"{destination['objects_present']} already there"
            )
        else:
            _echo(f"  {destination['url']}: failed, no manifest written ({destination['error']})")
    if report["encryption"]:
        _echo(f"  encrypted with key {report['encryption']['key_id']}; {report['secrets']['note']}")
    else:
        _echo("  the server secret is not in the backup: keys work after a restore only with it")


@app.command("list")
def list_backups(
    url: str = typer.Argument(..., help="The destination: a folder or fsspec URL."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the complete backups at a destination, oldest first.

    Example: berth backup list /mnt/backups
    """
    server = remote()
    if server is not None:
        from berth.cli import remote_backup

        found = remote_backup.listed(server, url)
    else:
        from berth.backup.destination import Destination, reaching
        from berth.backup.verify import list_snapshots

        with reaching(url):
            found = list_snapshots(Destination(url))
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        _echo(f"No complete backups at {url}. Create one with `berth backup create --to {url}`.")
        return
    for item in found:
        _echo(
            f"{item['id']}  {item['created_at']}  schema {item['schema_revision']}  "
            f"{_count(item['rows'], 'row')}  {_count(item['artifacts'], 'artifact')}  "
            f"{item['artifact_bytes']} bytes"
            + (f"  encrypted (key {item['key_id']})" if item["encrypted"] else "")
        )


def _split(url: str) -> tuple[str, str | None]:
    """URL[/SNAPSHOT] -> (destination, snapshot or None)."""
    from berth.backup.manifest import SNAPSHOT_ID

    head, _, last = url.rstrip("/").rpartition("/")
    if head and SNAPSHOT_ID.match(last):
        return head, last
    return url, None


@app.command("verify")
def verify_backup(
    url: str = typer.Argument(
        ..., help="The destination, optionally with /SNAPSHOT (else the latest)."
    ),
    deep: bool = typer.Option(
        False, "--deep", help="Re-hash every byte, not only sizes (decrypting: needs the key)."
    ),
    encryption_key_file: Path | None = KEY_FILE,
    drill: bool = typer.Option(
        False,
        "--drill",
        help="Also restore it into a temporary registry and predict with every aliased or "
        "routed version.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Check that a backup is whole: its manifest, table files and every object with its size.

    With --drill, the backup is restored into a temporary SQLite registry and every version an
    alias or endpoint route reaches is loaded and predicts on its stored sample rows; the
    command fails naming each version that does not. In remote mode the server's host checks
    (and drills) it: the destination and the key file are paths on that host.

    Example: berth backup verify /mnt/backups --deep --drill
    """
    where, snapshot = _split(url)
    server = remote()
    if server is not None:
        from berth.cli import remote_backup

        report = remote_backup.verify(
            server, where, snapshot, deep=deep, drill=drill, key_file=encryption_key_file
        )
    else:
        report = _verify_here(where, snapshot, deep, drill, encryption_key_file)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        how = "deep (re-hashed)" if deep else "sizes"
        _echo(
            f"backup {report['snapshot']} at {report['url']}: {_count(report['objects'], 'object')} "
            f"({report['bytes']} bytes) checked, {how}"
        )
        for problem in report["problems"]:
            _echo(f"  {problem}")
    if report["problems"]:
        raise BerthError(
            f"backup {report['snapshot']} at {report['url']} is damaged: "
            f"{'; '.join(report['problems'])}; restore from another destination or back up again"
        )
    if "drill" in report:
        from berth.cli.backup_drill import finish_drill

        finish_drill(report["drill"], printed=not as_json)


def _verify_here(
    where: str, snapshot: str | None, deep: bool, drill: bool, key_file: Path | None
) -> dict[str, Any]:
    from berth.backup.destination import Destination, reaching
    from berth.backup.manifest import latest
    from berth.backup.verify import verify

    key = backup_key(key_file)
    with reaching(where):
        destination = Destination(where)
        report = verify(destination, snapshot or latest(destination), deep, key).to_dict()
    if drill and not report["problems"]:
        from berth.cli.backup_drill import run_drill

        report["drill"] = run_drill(destination, report["snapshot"], key)
    return report


@app.command("restore")
def restore_backup(
    url: str = typer.Argument(..., help="The destination the backup is at."),
    snapshot: str | None = typer.Option(None, "--snapshot", help="Its id (else the latest)."),
    database: str = typer.Option(..., "--database", help="The database URL to restore into."),
    artifacts: str | None = typer.Option(
        None, "--artifacts", help="The artifact store to copy artifacts into (else the settings')."
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="Replace the rows of a non-empty registry, and a different server secret file "
        "(the old one is kept beside it).",
    ),
    encryption_key_file: Path | None = KEY_FILE,
    secret_file: Path | None = typer.Option(
        None,
        "--secret-file",
        help="Where to write an encrypted backup's server secret (else the settings' "
        "<home>/secret.key).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Restore a backup into an empty SQLite or PostgreSQL registry.

    An encrypted backup needs its key, and puts its server secret back so API keys work.

    Example: berth backup restore /mnt/backups --database sqlite:///registry.db
    """
    if remote() is not None:
        from berth.cli.remote_backup import RESTORE_REFUSED

        raise InvalidInput(RESTORE_REFUSED)
    from berth.backup.destination import Destination, reaching
    from berth.backup.manifest import latest, load
    from berth.backup.restore import restore
    from berth.backup.secret import SecretTarget
    from berth.cli.upload import progress
    from berth.registry.artifacts import ArtifactStore
    from berth.security.config import KeyConfig
    from berth.store.db import Database

    with reaching(url):
        source = Destination(url)
        chosen = snapshot or latest(source)
        total = sum(load(source, chosen).objects().values())
    configured = settings()
    store = ArtifactStore(
        artifacts or configured.resolved_artifact_url, configured.home.resolve() / "cache"
    )
    key = backup_key(encryption_key_file)
    target = SecretTarget(KeyConfig.from_settings(configured), secret_file)
    db = Database(database)
    try:
        with progress("Restoring", total) as (advance, _describe):
            report = restore(source, chosen, db, store, force, advance, key, target).to_dict()
    finally:
        db.dispose()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    rows = sum(report["rows"].values())
    _echo(
        f"restored backup {report['snapshot']} into {report['database']}: {_count(rows, 'row')} in "
        f"{_count(len(report['rows']), 'table')}, copied {_count(report['objects_copied'], 'object')} "
        f"({report['bytes_copied']} bytes)"
    )
    if report["interrupted_jobs"]:
        _echo(
            f"  {_count(report['interrupted_jobs'], 'job')} queued or running at the backup "
            "marked failed (interrupted): run them again"
        )
    _echo(f"  {report['secrets']}")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


backup_keys.register(app)
backup_prune.register(app)
