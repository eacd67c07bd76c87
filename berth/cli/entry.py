"""The `berth` command's entry point: Ctrl-C while the command still imports exits quietly.

Importing the CLI takes a few hundred milliseconds, before `berth.cli.main.main` can catch
anything; Python's default handler would turn a Ctrl-C then into a traceback from whichever
import was running.
"""

from __future__ import annotations

import signal


def _stop_quietly(_signal: int, _frame: object) -> None:
    raise SystemExit(130)


def exit_quietly_on_ctrl_c() -> None:
    """Until a command takes SIGINT over itself: exit 130, cleaning up as any exit does."""
    signal.signal(signal.SIGINT, _stop_quietly)


def hold_ctrl_c() -> None:
    """Block SIGINT until `release_ctrl_c`, across an exec.

    The mask survives `os.execv`, so a Ctrl-C that comes while the new interpreter starts waits
    for it instead of landing in CPython's own start-up (which reports it as a fatal error with a
    traceback, before any handler of ours exists)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})


def release_ctrl_c() -> None:
    """Let SIGINT in again; one that came while it was held is delivered now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def main() -> None:
    exit_quietly_on_ctrl_c()
    from berth.cli.main import main as run

    # From here the command handles KeyboardInterrupt itself (and uvicorn its own signals).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run()
