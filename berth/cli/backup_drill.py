"""`berth backup verify --drill`: the drill (berth.backup.drill) with a progress bar, its report
printed one line per version, and a failing version failing the command."""

from __future__ import annotations

from typing import Any

from berth.backup.crypto import BackupKey
from berth.backup.destination import Destination
from berth.cli.context import console, settings
from berth.errors import BerthError


def run_drill(
    destination: Destination, snapshot: str, key: BackupKey | None = None
) -> dict[str, Any]:
    """Restore `snapshot` into a temporary registry and smoke-test it; the report's document."""
    from berth.backup.drill import drill
    from berth.backup.manifest import load
    from berth.cli.upload import progress

    total = sum(load(destination, snapshot).objects().values())
    with progress("Restoring for the drill", total) as (advance, _describe):
        report = drill(destination, snapshot, settings().trusted_types, advance, key)
    return report.to_dict()


def finish_drill(report: dict[str, Any], printed: bool) -> None:
    """Print the drill's lines (unless the JSON was printed), then fail if a version failed."""
    failed = [v for v in report["versions"] if v["status"] != "ok"]
    if printed:
        _say(
            f"drill: restored into a temporary registry in {report['restore_seconds']:.1f} s; "
            f"{len(report['versions']) - len(failed)} of {len(report['versions'])} reachable "
            "versions predict"
        )
        for version in report["versions"]:
            reached = ", ".join(version["reached_by"])
            if version["status"] == "ok":
                _say(
                    f"  ok      {version['version']} ({reached}): {version['rows']} rows, load "
                    f"{version['load_seconds'] * 1000:.0f} ms, predict "
                    f"{version['predict_seconds'] * 1000:.0f} ms"
                )
            else:
                _say(f"  failed  {version['version']} ({reached}): {version['reason']}")
    if failed:
        names = "; ".join(f"{v['version']}: {v['reason']}" for v in failed)
        raise BerthError(
            f"the drill of backup {report['snapshot']} at {report['url']} failed for "
            f"{names}; restore from another backup or destination, or register the version "
            "again and back up again"
        )


def _say(text: str) -> None:
    console.print(text, highlight=False, markup=False, soft_wrap=True)
