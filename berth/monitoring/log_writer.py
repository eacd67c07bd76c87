"""The prediction log's writer process: inserts rows for a serving process, off its GIL.

Written from a thread of the serving process, the log cost a worker about a sixth of its
throughput at a few thousand requests a second: every insert holds the GIL in SQLAlchemy and
the database driver, and each time the event loop gave the GIL up (a socket write, the model's
own C code) it waited for the writer to hand it back. Here the serving process only pickles its
buffered results (`LoggedResult`: plain values and numpy arrays, pickled in C) onto a pipe; this
process, started per serving process with `python -m berth.monitoring.log_writer`, turns them
into rows and inserts them, and answers each batch with the rows written (or the error), so
`PredictionLog.flush` still returns once they are in the database.

The writer ignores SIGINT and SIGTERM: Ctrl-C or a stop reaches the whole process group, and the
serving process's last flush must still find it. It ends when its input closes (the serving
process closed it, or died).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import signal
import struct
import sys
from typing import Any, BinaryIO

from berth.monitoring.prediction_rows import LoggedResult

DATABASE_ENV = "BERTH_LOG_WRITER_DATABASE_URL"
"""The database, in the writer's environment rather than its command line (which any local user
can read)."""
_HEADER = struct.Struct(">I")
STOP_SECONDS = 10.0
"""How long a closing writer may take to write what it holds before it is killed."""


class WriterGone(Exception):
    """The writer process ended (or never started): its batches in flight are lost."""


class WriterProcess:
    """The serving process's side: starts the writer, sends batches, awaits their answers."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[int, asyncio.Future[tuple[int, str | None]]] = {}
        self._numbers = itertools.count()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, DATABASE_ENV: self.database_url},
        )
        self._reader = asyncio.create_task(self._read_answers())

    async def write(self, results: list[LoggedResult]) -> int:
        """Rows written for `results`; the writer's error as `RuntimeError`, `WriterGone` when it
        is not running."""
        process = self._process
        if process is None or process.stdin is None or not self.alive:
            raise WriterGone("the prediction log writer is not running")
        number = next(self._numbers)
        answer: asyncio.Future[tuple[int, str | None]] = asyncio.get_running_loop().create_future()
        self._waiting[number] = answer
        data = pickle.dumps((number, results), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            process.stdin.write(_HEADER.pack(len(data)) + data)
            await process.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            self._waiting.pop(number, None)
            raise WriterGone(f"the prediction log writer stopped reading: {exc}") from exc
        written, error = await answer
        if error is not None:
            raise RuntimeError(error)
        return written

    async def close(self) -> None:
        """Close its input (it writes what it holds, then ends) and wait for it."""
        process = self._process
        if process is None:
            return
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), STOP_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _read_answers(self) -> None:
        assert self._process is not None
        output = self._process.stdout
        assert output is not None
        try:
            while True:
                (size,) = _HEADER.unpack(await output.readexactly(_HEADER.size))
                # The writer this process started, over its private pipe.
                number, written, error = pickle.loads(await output.readexactly(size))  # noqa: S301
                found = self._waiting.pop(number, None)
                if found is not None and not found.done():
                    found.set_result((written, error))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # it ended
        finally:
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(WriterGone("the prediction log writer ended"))
            self._waiting.clear()


# ---------------------------------------------------------------------------- the process


def serve(source: BinaryIO, answers: BinaryIO, insert_rows: Any) -> None:
    """Read batches from `source` until it ends; insert each; answer each on `answers`."""
    from berth.monitoring.prediction_rows import rows_of

    while True:
        header = source.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        (size,) = _HEADER.unpack(header)
        # The serving process that started this one, over its private pipe.
        number, results = pickle.loads(source.read(size))  # noqa: S301
        try:
            rows = [row for result in results for row in rows_of(result)]
            if rows:
                insert_rows(rows)
            answer: tuple[int, int, str | None] = (number, len(rows), None)
        except Exception as exc:  # told to the serving process, which counts the rows dropped
            answer = (number, 0, f"{type(exc).__name__}: {exc}")
        data = pickle.dumps(answer)
        answers.write(_HEADER.pack(len(data)) + data)
        answers.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from sqlalchemy import Table, insert

    from berth.store.db import Database
    from berth.store.tables import PredictionRow

    table: Table = PredictionRow.__table__  # type: ignore[assignment]
    db = Database(os.environ.pop(DATABASE_ENV))

    def insert_rows(rows: list[dict[str, Any]]) -> None:
        with db.session() as session:
            session.execute(insert(table), rows)

    try:
        serve(sys.stdin.buffer, sys.stdout.buffer, insert_rows)
    finally:
        db.engine.dispose()


if __name__ == "__main__":
    main()
