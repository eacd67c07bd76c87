"""A throwaway PostgreSQL cluster in a folder of its own, on its own port, to stop and restart
without touching the shared server.

PostgreSQL refuses to run as root; under root the cluster runs as the `postgres` account (the
Debian package's), which then owns the folder. Stdlib only, like `tests.private_redis`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.ports import free_port

ROOT_ACCOUNT = "postgres"
"""The account the cluster runs as when the tests run as root."""


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: the newest /usr/lib/postgresql/N/bin, or PATH's."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda path: int(Path(path).parent.parent.name),
    )
    found = versions[-1] if versions else shutil.which("pg_ctl")
    if found is None or shutil.which("initdb", path=str(Path(found).parent)) is None:
        return None
    return Path(found).parent


def missing() -> str | None:
    """Why a private cluster cannot run here, or None when it can."""
    if binaries() is None:
        return "initdb and pg_ctl are not under /usr/lib/postgresql/*/bin nor on PATH"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(ROOT_ACCOUNT)
        except KeyError:
            return f"running as root (which PostgreSQL refuses) without a '{ROOT_ACCOUNT}' account"
    return None


@dataclass
class PrivatePostgres:
    port: int = field(default_factory=free_port)
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="berth-pg-")))

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def init(self) -> None:
        """Create the cluster: user `postgres`, trusted on loopback."""
        if os.geteuid() == 0:
            account = pwd.getpwnam(ROOT_ACCOUNT)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync")

    def start(self) -> None:
        """Start (again, on the same port and data) and wait until it accepts connections."""
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        log = str(self.folder / "server.log")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start"
        )

    def stop(self) -> None:
        """Stop at once, as a crash or a pulled cable would: no goodbye to clients."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        """Stop the cluster if it runs, and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        folder = binaries()
        assert folder is not None
        extra: dict[str, Any] = {}
        if os.geteuid() == 0:
            account = pwd.getpwnam(ROOT_ACCOUNT)
            extra = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        done = subprocess.run(
            [str(folder / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.folder,
            **extra,
        )
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise AssertionError(f"{program} failed: {done.stderr}{done.stdout}\n{tail}")
