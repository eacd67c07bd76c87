"""The README's shell blocks, run in order in one shell, as a newcomer pasting them would.

Every ```bash block runs, in a fresh directory with the default `./.berth` home, unless the line
before it says `<!-- not run by tests/test_readme.py: REASON -->`. The blocks run as written,
with these changes only, each for a reason a reader's machine does not have:

- the ports 8321 (the server), 8322 (its gRPC) and 9464 (the stream consumer's metrics) become
  free ports, and Redis is a private server of this test's (so parallel tests and reruns do not
  meet);
- `make install` (and activating its environment) is skipped: this test runs inside the
  installed environment, whose commands come first on PATH;
- `curl` fails on an HTTP error status (`--fail-with-body`), so a 4xx or 5xx fails the test
  instead of printing an error document nobody reads.

The shell runs with `set -euo pipefail`: any command that fails, fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port, require_service
from tests.private_redis import PrivateRedis

README = Path(__file__).parents[1] / "README.md"
_SKIP = re.compile(r"<!-- not run by tests/test_readme\.py: (?P<reason>.+?) -->")


@dataclass(frozen=True)
class Block:
    line: int
    text: str
    skipped: str | None
    """Why the block is not run (from the comment before it), or None."""


def blocks() -> list[Block]:
    lines = README.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```bash":
            end = lines.index("```", index + 1)
            before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            skip = _SKIP.fullmatch(before.strip())
            found.append(
                Block(
                    line=index + 1,
                    text="\n".join(lines[index + 1 : end]),
                    skipped=skip["reason"] if skip else None,
                )
            )
            index = end
        index += 1
    return found


def test_every_skipped_block_says_why_and_most_blocks_run() -> None:
    found = blocks()
    assert all(b.skipped is None or len(b.skipped) > 20 for b in found)
    assert sum(b.skipped is None for b in found) >= 10
    assert README.read_text().count("<!-- not run by tests/test_readme.py") == sum(
        b.skipped is not None for b in found
    )


def script(ports: dict[str, int], redis_port: int) -> str:
    parts = [
        "set -euo pipefail",
        # --fail-with-body unless the command fails on errors already (curl refuses both)
        'curl() { case " $* " in *" -sf "*|*" -f "*) command curl "$@";;'
        ' *) command curl --fail-with-body --show-error "$@";; esac; }',
    ]
    for block in blocks():
        if block.skipped is not None:
            continue
        text = block.text
        for old, new in ports.items():
            text = text.replace(old, str(new))
        text = text.replace("127.0.0.1:6379", f"127.0.0.1:{redis_port}")
        text = re.sub(r"\bredis-cli\b", f"redis-cli -p {redis_port}", text)
        text = re.sub(r"^make install\b.*$", ": installed already", text, flags=re.M)
        parts.append(f"echo '--- README.md line {block.line}'")
        parts.append(text)
    parts.append("echo '--- the README ran to its end'")
    return "\n".join(parts) + "\n"


@pytest.mark.server
def test_the_readme_runs_in_order(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        require_service("redis-server", "not on PATH")
    (tmp_path / "redis").mkdir()
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "OTEL_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    ports = {"8321": free_port(), "8322": free_port(), "9464": free_port(), "9092": free_port()}
    text = script(ports, redis.port)
    (tmp_path / "readme.sh").write_text(text)
    log = tmp_path / "readme.log"
    # Output to a file, not a pipe: the servers the README starts in the background keep their
    # copy of it open after the shell ends.
    with log.open("w") as sink:
        process = subprocess.Popen(
            ["bash", str(tmp_path / "readme.sh")],
            cwd=work,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background servers are stopped with it
        )
    try:
        process.wait(timeout=900)
    finally:
        _kill_group(process)
        redis.kill()
    output = log.read_text()
    assert process.returncode == 0, output[-6000:]
    assert "--- the README ran to its end" in output
    assert "Traceback" not in output, output[-6000:]


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """Stop what the README left running (its server, scheduler): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
