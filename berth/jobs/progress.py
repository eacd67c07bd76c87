"""How a running batch job shows its progress: a rich bar with rows/s and ETA on a terminal."""

from __future__ import annotations

from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class ProgressReport(Protocol):
    def start(self, description: str, total: int | None, done: int) -> None:
        """`done` rows were committed by an earlier, interrupted run (they are not redone)."""
        ...

    def update(self, done: int) -> None: ...

    def stop(self) -> None: ...


class _RowsPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- rows/s" if speed is None else f"{speed:,.0f} rows/s", style="cyan")


class RichProgress:
    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            _RowsPerSecond(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            # rows/s over the last half minute: steady yet quick to show a slowdown
            speed_estimate_period=30.0,
        )
        self._task: TaskID | None = None

    def start(self, description: str, total: int | None, done: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task(description, total=total, completed=done)

    def update(self, done: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done)

    def stop(self) -> None:
        self._progress.stop()
