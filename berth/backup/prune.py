"""`berth backup prune`: drop old snapshots by keep rules, then the objects none references.

The rules are restic's and borg's: `last` keeps the newest N snapshots; `daily` the newest
snapshot of each of the N most recent days (UTC) that have one; `weekly` likewise per ISO week.
A snapshot any rule keeps stays, and since every rule keeps the newest snapshot, a prune never
empties a destination. A pruned snapshot loses its manifest first, so an interrupted prune
leaves at worst an incomplete folder, never a manifest naming deleted files.

Objects are removed only once no remaining manifest names them (read again after the
snapshots are gone, so a backup that completed meanwhile counts). Files younger than
`GRACE` are left alone, since a backup may be running: its partial files, the objects it has
published but not yet listed in a manifest, and a snapshot folder it is still writing. Old
partial files and old folders without a manifest are leftovers of failed backups and go.
Running a prune while a backup re-uploads an object no remaining snapshot names is still a
race (as in restic without its locks): prune when no backup runs, e.g. right after one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from berth.backup.destination import MANIFEST, OBJECTS, SEALED_OBJECTS, SNAPSHOTS, Destination
from berth.backup.manifest import load, manifest_path, snapshot_folder, snapshot_time
from berth.errors import InvalidInput

GRACE = timedelta(hours=24)


@dataclass(frozen=True)
class KeepRules:
    last: int = 0
    daily: int = 0
    weekly: int = 0

    def check(self) -> None:
        if min(self.last, self.daily, self.weekly) < 0:
            raise InvalidInput("--keep-last, --keep-daily and --keep-weekly take 0 or more")
        if not (self.last or self.daily or self.weekly):
            raise InvalidInput(
                "give at least one rule of what to keep: --keep-last N, --keep-daily N or "
                "--keep-weekly N (a prune never removes every backup)"
            )


def choose(created: dict[str, datetime], rules: KeepRules) -> dict[str, list[str]]:
    """The snapshots `rules` keep (id -> the rules keeping it), of `created` (id -> time)."""
    rules.check()
    newest_first = sorted(created, key=lambda s: (created[s], s), reverse=True)
    kept: dict[str, list[str]] = {}
    # What each rule keeps one snapshot of: every snapshot, each day, each ISO week.
    buckets: list[tuple[str, int, Callable[[str], object]]] = [
        ("last", rules.last, lambda s: s),
        ("daily", rules.daily, lambda s: created[s].astimezone(UTC).date()),
        ("weekly", rules.weekly, lambda s: created[s].astimezone(UTC).isocalendar()[:2]),
    ]
    for reason, count, bucket_of in buckets:
        seen: set[object] = set()
        for snapshot in newest_first:
            if count <= 0:
                break
            bucket = bucket_of(snapshot)
            if bucket in seen:
                continue
            seen.add(bucket)
            kept.setdefault(snapshot, []).append(reason)
            count -= 1
    return kept


@dataclass
class PruneReport:
    url: str
    dry_run: bool
    kept: list[dict[str, Any]] = field(default_factory=list)
    removed: list[dict[str, Any]] = field(default_factory=list)
    objects_removed: int = 0
    bytes_removed: int = 0
    partials_removed: int = 0
    incomplete_removed: list[str] = field(default_factory=list)
    recent_left: int = 0
    """Unreferenced or partial files, or folders without a manifest, younger than GRACE."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "dry_run": self.dry_run,
            "kept": self.kept,
            "removed": self.removed,
            "objects_removed": self.objects_removed,
            "bytes_removed": self.bytes_removed,
            "partials_removed": self.partials_removed,
            "incomplete_removed": self.incomplete_removed,
            "recent_left": self.recent_left,
        }


def prune(
    destination: Destination,
    rules: KeepRules,
    dry_run: bool = False,
    now: datetime | None = None,
) -> PruneReport:
    """Apply `rules` at `destination` (with `dry_run`, only say what would go); `now` is for
    tests."""
    rules.check()
    now = now or datetime.now(UTC)
    report = PruneReport(destination.url, dry_run)
    manifests = {s: load(destination, s) for s in destination.snapshot_ids()}
    if not manifests:
        raise InvalidInput(
            f"no complete backup at {destination.url} to prune; check the URL with "
            f"`berth backup list {destination.url}`"
        )
    created = {s: datetime.fromisoformat(m.created_at) for s, m in manifests.items()}
    kept = choose(created, rules)
    for snapshot in sorted(created, reverse=True):
        entry = {"id": snapshot, "created_at": manifests[snapshot].created_at}
        if snapshot in kept:
            report.kept.append({**entry, "reasons": kept[snapshot]})
            continue
        report.removed.append(entry)
        if not dry_run:
            # The manifest first: from then on the folder is an incomplete snapshot nobody reads.
            destination.fs.rm(destination.path(manifest_path(snapshot)))
            destination.fs.rm(destination.path(snapshot_folder(snapshot)), recursive=True)
    _remove_incomplete(destination, report, now)
    _remove_objects(destination, report, now, set(kept))
    return report


def _referenced(destination: Destination, report: PruneReport, kept: set[str]) -> set[str]:
    """The object keys some remaining snapshot needs. After a real prune the manifests are
    listed again, so a backup completed meanwhile is counted; a dry run counts the kept ones."""
    remaining = kept if report.dry_run else set(destination.snapshot_ids())
    keys: set[str] = set()
    for snapshot in remaining:
        manifest = load(destination, snapshot)
        keys.update(manifest.object_key(sha) for sha in manifest.objects())
    return keys


def _remove_objects(
    destination: Destination, report: PruneReport, now: datetime, kept: set[str]
) -> None:
    referenced = _referenced(destination, report, kept)
    fs = destination.fs
    fs.invalidate_cache()
    for prefix in (OBJECTS, SEALED_OBJECTS):
        folder = destination.path(prefix)
        if not fs.isdir(folder):
            continue
        for path, info in sorted(fs.find(folder, detail=True).items()):
            relative = str(path)[len(destination.root) :].lstrip("/")
            if not relative.endswith(".partial") and relative in referenced:
                continue
            if _recent(info, now):
                report.recent_left += 1
                continue
            if relative.endswith(".partial"):
                report.partials_removed += 1
            else:
                report.objects_removed += 1
                report.bytes_removed += int(info.get("size") or 0)
            if not report.dry_run:
                fs.rm(path)


def _remove_incomplete(destination: Destination, report: PruneReport, now: datetime) -> None:
    """Folders of snapshots without a manifest: failed backups once old, running ones before."""
    fs = destination.fs
    # Object stores' clients cache listings: the folders removed above must not be seen again.
    fs.invalidate_cache()
    folder = destination.path(SNAPSHOTS)
    if not fs.isdir(folder):
        return
    for entry in fs.ls(folder, detail=False):
        name = str(entry).rstrip("/").rsplit("/", 1)[-1]
        if fs.isfile(f"{folder}/{name}/{MANIFEST}"):
            continue
        started = snapshot_time(name)
        if started is None:
            continue  # not a folder a backup made: not ours to remove
        held = fs.find(f"{folder}/{name}", detail=True).values()
        if not any(info.get("type") == "file" for info in held):
            # Nothing a backup wrote (it writes a folder's files as it makes the folder): an
            # empty folder, or a prefix some stores (SeaweedFS) keep after its files went.
            continue
        if now - started < GRACE:
            report.recent_left += 1
            continue
        report.incomplete_removed.append(name)
        if not report.dry_run:
            fs.rm(f"{folder}/{name}", recursive=True)


def _recent(info: dict[str, Any], now: datetime) -> bool:
    """Whether a file was written within GRACE; a file whose time the filesystem does not give
    counts as recent (left alone rather than risk a running backup's object)."""
    modified = _modified(info)
    return modified is None or now - modified < GRACE


def _modified(info: dict[str, Any]) -> datetime | None:
    # Each fsspec backend names the modification time its own way.
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
