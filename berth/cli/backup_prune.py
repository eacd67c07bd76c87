"""`berth backup prune`: remove old backups by keep rules, then the objects none needs."""

from __future__ import annotations

import json
from typing import Any

import typer

from berth.cli.context import console, remote


def _echo(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def prune_backups(
    url: str = typer.Argument(..., help="The destination: a folder or fsspec URL."),
    keep_last: int = typer.Option(0, "--keep-last", help="Keep the newest N backups."),
    keep_daily: int = typer.Option(
        0, "--keep-daily", help="Keep the newest backup of each of the N latest days (UTC)."
    ),
    keep_weekly: int = typer.Option(
        0, "--keep-weekly", help="Keep the newest backup of each of the N latest ISO weeks."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would go; remove nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Remove the backups no rule keeps, then the artifact objects no backup left needs.

    A backup any rule keeps stays; the newest always does. Partial files and unreferenced
    objects younger than 24 hours are left alone, as a backup may be writing them. Needs no
    encryption key. In remote mode the server's host prunes (the destination is its path).

    Example: berth backup prune /mnt/backups --keep-last 3 --keep-daily 7 --keep-weekly 4
    """
    from berth.backup.prune import KeepRules

    rules = KeepRules(keep_last, keep_daily, keep_weekly)
    rules.check()
    server = remote()
    if server is not None:
        from berth.cli import remote_backup

        body = {"destination": url, "keep_last": keep_last, "keep_daily": keep_daily,
                "keep_weekly": keep_weekly, "dry_run": dry_run}  # fmt: skip
        report = remote_backup.prune(server, body)
    else:
        from berth.backup.destination import Destination
        from berth.backup.prune import prune

        report = prune(Destination(url), rules, dry_run).to_dict()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print(report)


def _print(report: dict[str, Any]) -> None:
    would = "would remove" if report["dry_run"] else "removed"
    for kept in report["kept"]:
        _echo(f"keep    {kept['id']}  {kept['created_at']}  ({', '.join(kept['reasons'])})")
    for removed in report["removed"]:
        _echo(f"remove  {removed['id']}  {removed['created_at']}")
    parts = [
        _count(len(report["removed"]), "backup"),
        f"{_count(report['objects_removed'], 'object')} ({report['bytes_removed']} bytes)",
        _count(report["partials_removed"], "partial file"),
    ]
    if report["incomplete_removed"]:
        parts.append(_count(len(report["incomplete_removed"]), "incomplete backup folder"))
    line = (
        f"{report['url']}: {would} {', '.join(parts)}; kept {_count(len(report['kept']), 'backup')}"
    )
    if report["recent_left"]:
        line += (
            f"; left {_count(report['recent_left'], 'recent file')} alone (a backup may be "
            "running: the next prune takes them if they are still unneeded)"
        )
    if report["dry_run"]:
        line += " (dry run: nothing was removed)"
    _echo(line)


def register(backup_app: typer.Typer) -> None:
    """Add `berth backup prune` to `berth backup`."""
    backup_app.command("prune")(prune_backups)
