"""Process trees from /proc (Linux), for tests that kill a server's workers; stdlib only."""

from __future__ import annotations

from pathlib import Path


def parent_of(pid: int) -> int:
    # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces, so split after ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if parent_of(int(entry.name)) == pid:
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue  # gone meanwhile
    return sorted(found)


def command_of(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def descendants_of(pid: int) -> list[int]:
    found: list[int] = []
    for child in children_of(pid):
        found.append(child)
        found.extend(descendants_of(child))
    return found
