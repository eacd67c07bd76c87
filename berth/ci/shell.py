"""One bash process of the local runner: its output streamed line by line, a time limit, and
markers that tell which of several commands in one shell is running."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

MARKER = "\x1eberth-step "
"""A line the runner's own script prints before each command of a one-shell job."""
TIMED_OUT = -1
"""The code `run` returns when the time limit killed the process."""
_DRAIN_SECONDS = 2.0
"""How long output is still read after bash exits (a background child may hold the pipe)."""


class Shell:
    def __init__(self, write: Callable[[str], None], mask: Callable[[str], str]) -> None:
        self.write = write
        self.mask = mask
        self.groups: list[int] = []
        """Process groups started: a background process of a step lives until the job ends,
        as on the providers' runners; `stop` ends them."""

    def run(
        self,
        script: Path,
        cwd: Path,
        env: Mapping[str, str],
        timeout: float | None,
        on_marker: Callable[[str], None] | None = None,
    ) -> int:
        """Run `bash -eo pipefail SCRIPT`; its output goes to `write`, each line after `   | `."""
        process = subprocess.Popen(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.groups.append(process.pid)
        assert process.stdout is not None
        reader = threading.Thread(target=self._read, args=(process.stdout, on_marker), daemon=True)
        reader.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(process.pid)
            process.wait()
            code = TIMED_OUT
        except BaseException:
            _kill(process.pid)
            raise
        reader.join(_DRAIN_SECONDS)
        return code

    def stop(self) -> None:
        for group in self.groups:
            _kill(group)
        self.groups.clear()

    def _read(self, stream: object, on_marker: Callable[[str], None] | None) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if line.startswith(MARKER) and on_marker is not None:
                on_marker(line[len(MARKER) :])
            else:
                self.write("   | " + self.mask(line))


def _kill(group: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(group, signal.SIGKILL)
