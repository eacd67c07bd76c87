"""Backups of the registry: a consistent snapshot of every table plus the artifacts it names,
to one or more destinations (folders or fsspec URLs), and their listing, checking, restore and
pruning.

A destination holds `objects/ab/<sha256>` (one file per distinct content, shared by every
snapshot, so a second backup copies only new bytes) and `snapshots/<id>/` (one gzip'd JSON Lines
file per table and `manifest.json`, written last: a snapshot without one is incomplete).
Encrypted snapshots keep their sealed objects apart, in `objects-enc/<key id>/ab/<sha256>`, and
hold the sealed server secret (see berth.backup.crypto and berth.backup.secret).
"""
