"""Run a batch job: read a chunk, skip what the sink holds, score, commit with the checkpoint.

One loop for every source and sink. Reading runs a chunk ahead in a thread; with `--workers N`
chunks are scored by N processes (each loads the version once) and still committed in source
order, so the checkpoint always names a prefix of the source.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from typing import Any

import numpy as np

from berth.config import Settings
from berth.errors import BerthError
from berth.jobs import records as r
from berth.jobs.file_sinks import FileSink
from berth.jobs.progress import ProgressReport
from berth.jobs.records import Counts, JobInfo, JobService
from berth.jobs.scoring import Scored, Scorer
from berth.jobs.sink_types import Checkpoint, Sink
from berth.jobs.sinks import open_sink
from berth.jobs.sources import CSV, Chunk, FileSource, Source, open_source
from berth.jobs.spec import APPEND, UPSERT, BatchSpec

# `Summary` is what a run reports; it lives apart so that a remote `berth batch run` prints a
# stored one without importing the scoring machinery.
from berth.jobs.summary import Summary as Summary
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes.loading import load_version

log = logging.getLogger("berth.jobs")

READ_AHEAD = 2
"""Chunks read ahead of scoring; with the chunks in flight this bounds the job's memory."""


def run_job(
    registry: Registry,
    settings: Settings,
    spec: BatchSpec,
    args: list[str],
    job_id: int | None = None,
    progress: ProgressReport | None = None,
    stop: threading.Event | None = None,
) -> Summary:
    """Run `spec` to the end (or until cancelled, stopped or over the error limit).

    With `job_id` the run attaches to that queued record (made by the API or the scheduler);
    otherwise it records a new job. A run whose sink holds an unfinished checkpoint of the same
    job resumes from it.
    """
    jobs = JobService(registry.db)
    job_key = spec.job_key()
    if job_id is None:
        job = jobs.create(
            job_key=job_key, model=spec.model, source=spec.source, sink=spec.sink, args=args
        )
        job_id = job.id
    try:
        return _Run(registry, settings, spec, jobs, job_id, progress, stop).execute()
    except BerthError as exc:
        _record_failure(jobs, job_id, exc.message)
        raise
    except BaseException as exc:
        _record_failure(jobs, job_id, f"internal error: {type(exc).__name__}: {exc}")
        raise


def _record_failure(jobs: JobService, job_id: int, message: str) -> None:
    info = jobs.get(job_id)
    if info.status in r.FINISHED:
        return
    jobs.finish(job_id, r.FAILED, info.counts, message)


class _Run:
    def __init__(
        self,
        registry: Registry,
        settings: Settings,
        spec: BatchSpec,
        jobs: JobService,
        job_id: int,
        progress: ProgressReport | None,
        stop: threading.Event | None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.spec = spec
        self.jobs = jobs
        self.job_id = job_id
        self.progress = progress
        self.stop = stop or threading.Event()
        self.version: VersionInfo = registry.resolve(spec.model)
        self.source: Source = open_source(spec.source, spec.query, spec.table, spec.id_column)
        self.scorer = Scorer(
            self.version,
            load_version(registry, self.version),
            spec.id_column,
            spec.features,
            text_source=_text_source(self.source),
        )
        self.sink: Sink = open_sink(
            spec.sink,
            spec.sink_table,
            spec.id_column,
            spec.mode == UPSERT,
            spec.errors,
            spec.errors_table,
        )

    def execute(self) -> Summary:
        try:
            return self._execute()
        finally:
            self.sink.close()

    def _execute(self) -> Summary:
        spec = self.spec
        if isinstance(self.sink, FileSink):
            self.sink.set_job(f"{spec.model} over {spec.source}")
        stored = self.sink.open(spec.job_key())
        resumed = None if stored.finished else int(stored.position.get("rows", 0)) or None
        state = stored if not stored.finished else Checkpoint(chunks=stored.chunks, finished=False)
        left = self.source.count(state.position)
        done_before = state.scored + state.skipped + state.rejected
        total = None if left is None else left + done_before
        self.jobs.start(
            self.job_id,
            version=self.version.ref,
            job_key=spec.job_key(),
            rows_total=total,
            resumed_at_row=resumed,
        )
        self._close_killed_runs()
        log.info(
            "job %s: %s with %s into %s%s",
            self.job_id,
            self.source.description,
            self.version.ref,
            self.sink.description,
            f", resuming at row {resumed}" if resumed else "",
        )
        if self.progress is not None:
            self.progress.start(f"job {self.job_id} {self.version.ref}", total, done_before)
        started = time.perf_counter()
        self._started, self._done_before, self._last_beat = started, done_before, 0.0
        status, message = r.SUCCEEDED, None
        # Chunk k is committed in this thread while chunk k+1 is scored; one commit at a time,
        # in source order, and nothing is judged (progress, cancel, limits) before it is in.
        committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-batch-commit")
        in_flight: tuple[Future[None], Checkpoint] | None = None
        planned = state
        try:
            for chunk, skipped, scored in self._scored_chunks(state):
                if in_flight is not None:
                    stored = state = self._settle(*in_flight)
                    in_flight = None
                    status, message = self._verdict(state)
                    if status != r.SUCCEEDED:
                        break  # the chunk in hand was never committed: a rerun redoes it
                after = Checkpoint(
                    position=chunk.position,
                    chunks=planned.chunks + 1,
                    scored=planned.scored + len(scored.results),
                    skipped=planned.skipped + skipped,
                    rejected=planned.rejected + len(scored.rejected),
                    finished=False,
                )
                commit = committer.submit(
                    self.sink.commit, scored.results, scored.rejected, planned, after
                )
                in_flight, planned = (commit, after), after
            if in_flight is not None and status == r.SUCCEEDED:
                stored = state = self._settle(*in_flight)
                in_flight = None
                too_many = self._too_many_rejected(state)  # all is in: only the limit counts
                if too_many:
                    status, message = r.FAILED, too_many
        finally:
            if in_flight is not None:
                in_flight[0].exception()  # let a commit under way end before the sink closes
            committer.shutdown(wait=True)
            if self.progress is not None:
                self.progress.stop()
        if status == r.SUCCEEDED:
            stored = self.sink.finish(stored)
        else:
            message = f"{message}; run the same command again to resume after row {_rows(state):,}"
        counts = _counts(state, done_before, started)
        summary = Summary(
            job_id=self.job_id,
            status=status,
            version=self.version.ref,
            counts=counts,
            seconds=time.perf_counter() - started,
            sink=self._sink_description(),
            errors=self.sink.errors.description if self.sink.errors else _errors_table(self.sink),
            message=message,
            resumed_at_row=resumed,
        )
        self.jobs.finish(self.job_id, status, counts, message, summary.to_dict())
        return summary

    def _settle(self, commit: Future[None], after: Checkpoint) -> Checkpoint:
        """Wait for a chunk's commit (raising its error) and report the progress it made."""
        commit.result()
        if self.progress is not None:
            self.progress.update(_rows(after))
        return after

    def _verdict(self, state: Checkpoint) -> tuple[str, str | None]:
        """Whether the job goes on after `state` was committed: cancelled, stopped, or failed
        over the error limit; the heartbeat (about once a second) also reads cancel requests."""
        if time.perf_counter() - self._last_beat >= r.HEARTBEAT_SECONDS:
            self._last_beat = time.perf_counter()
            counts = _counts(state, self._done_before, self._started)
            if self.jobs.heartbeat(self.job_id, counts):
                return r.CANCELLED, "cancelled by `berth jobs cancel`"
        too_many = self._too_many_rejected(state)
        if too_many:
            return r.FAILED, too_many
        stop = self._stopped()
        if stop is not None:
            return r.CANCELLED, stop
        return r.SUCCEEDED, None

    def _stopped(self) -> str | None:
        return "stopped by a signal" if self.stop.is_set() else None

    def _scored_chunks(self, state: Checkpoint) -> Iterator[tuple[Chunk, int, Scored]]:
        """(chunk, rows skipped, scored) in source order."""
        chunks = _read_ahead(self.source.chunks(state.position, self.spec.chunk_size))
        if self.spec.workers == 1:
            for chunk in chunks:
                chunk, skipped = self._unscored(chunk)
                yield chunk, skipped, self.scorer.score(chunk.frame, chunk.ids, _now())
            return
        yield from self._scored_in_workers(chunks)

    def _scored_in_workers(self, chunks: Iterator[Chunk]) -> Iterator[tuple[Chunk, int, Scored]]:
        workers = self.spec.workers
        # spawn, not fork: runtimes hold thread pools that a forked child would inherit locked
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=get_context("spawn"),
            initializer=_start_worker,
            initargs=(self.settings, self.version.model, self.version.number, self.spec),
        ) as pool:
            pending: deque[tuple[Chunk, int, Future[Scored]]] = deque()
            try:
                for chunk in chunks:
                    chunk, skipped = self._unscored(chunk)
                    pending.append(
                        (chunk, skipped, pool.submit(_score_in_worker, chunk.frame, chunk.ids))
                    )
                    if len(pending) >= 2 * workers:
                        done, skipped_rows, future = pending.popleft()
                        yield done, skipped_rows, future.result()
                while pending:
                    done, skipped_rows, future = pending.popleft()
                    yield done, skipped_rows, future.result()
            finally:
                for _, _, future in pending:
                    future.cancel()

    def _unscored(self, chunk: Chunk) -> tuple[Chunk, int]:
        """The chunk without rows the sink already has: appending never writes an id twice,
        and an upsert with --skip-scored leaves rows that hold a prediction alone."""
        if self.spec.mode == APPEND or self.spec.skip_scored:
            have = self.sink.existing(chunk.ids, scored_only=self.spec.mode == UPSERT)
            if have.any():
                keep = ~have
                frame = chunk.frame[keep].reset_index(drop=True)
                return Chunk(frame, chunk.ids[keep], chunk.position), int(have.sum())
        return chunk, 0

    def _too_many_rejected(self, state: Checkpoint) -> str | None:
        handled = state.scored + state.skipped + state.rejected
        if not handled or not state.rejected:
            return None
        share = state.rejected / handled
        if share <= self.spec.max_error_rate:
            return None
        return (
            f"{state.rejected:,} of {handled:,} rows rejected ({share:.2%}), above "
            f"--max-error-rate {self.spec.max_error_rate:g}; the reasons are in the errors sink. "
            "Fix those rows, or raise --max-error-rate"
        )

    def _close_killed_runs(self) -> None:
        """Earlier runs still marked running: this run holds the sink, so they are gone."""
        host = socket.gethostname()[:128]
        for info in self.jobs.interrupted(self.spec.job_key(), exclude=self.job_id):
            if info.lost or (info.host == host and not _alive(info)):
                self.jobs.mark_lost(info.id, resumed_by=self.job_id)

    def _sink_description(self) -> str:
        if isinstance(self.sink, FileSink):
            return f"{self.sink.description}, {self.sink.describe_parts()}"
        return self.sink.description


def _text_source(source: Source) -> bool:
    return isinstance(source, FileSource) and source.format == CSV


def _errors_table(sink: Sink) -> str | None:
    table = getattr(sink, "errors_table", None)
    return None if table is None else f"table {table} beside the results"


def _alive(info: JobInfo) -> bool:
    if info.pid is None:
        return False
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return info.pid != os.getpid()


def _counts(state: Checkpoint, done_before: int, started: float) -> Counts:
    elapsed = max(time.perf_counter() - started, 1e-9)
    this_run = _rows(state) - done_before
    return Counts(state.scored, state.skipped, state.rejected, this_run / elapsed)


def _rows(state: Checkpoint) -> int:
    return state.scored + state.skipped + state.rejected


def _now() -> datetime:
    return datetime.now(UTC)


_DONE = object()


def _read_ahead(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Read the next chunks in a thread while the current one is scored and written."""
    ready: queue.Queue[Any] = queue.Queue(maxsize=READ_AHEAD)
    quit_reading = threading.Event()

    def read() -> None:
        try:
            for chunk in chunks:
                while not quit_reading.is_set():
                    try:
                        ready.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if quit_reading.is_set():
                    return
            ready.put(_DONE)
        except BaseException as exc:  # handed to the consumer, which raises it
            ready.put(exc)

    reader = threading.Thread(target=read, name="berth-batch-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        quit_reading.set()


# worker processes ----------------------------------------------------------------------------

_worker_scorer: Scorer | None = None


def _start_worker(settings: Settings, model: str, number: int, spec: BatchSpec) -> None:
    global _worker_scorer
    registry = Registry.from_settings(settings, migrate=False)
    version = registry.get_version(model, number)
    source = open_source(spec.source, spec.query, spec.table, spec.id_column)
    _worker_scorer = Scorer(
        version,
        load_version(registry, version),
        spec.id_column,
        spec.features,
        text_source=_text_source(source),
    )


def _score_in_worker(frame: Any, ids: np.ndarray[Any, Any]) -> Scored:
    assert _worker_scorer is not None
    return _worker_scorer.score(frame, ids, _now())
