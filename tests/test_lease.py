"""The database lease on SQLite and PostgreSQL: terms, renewal, take-over, release, races."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from berth.errors import InvalidInput
from berth.registry.service import Registry
from berth.store.db import Database
from berth.store.lease import Lease, LeaseInfo, process_holder
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
TTL = 10.0


class FakeClock:
    """A clock the test moves by hand, shared by every contender that should agree on "now"."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def db(registry: Registry) -> Database:
    """The migrated registry database, once on SQLite and once on PostgreSQL."""
    return registry.db


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def lease(db: Database, clock: FakeClock, holder: str, name: str = "rollouts") -> Lease:
    return Lease(db, name, holder, ttl_seconds=TTL, clock=clock)


# terms --------------------------------------------------------------------------------------


def test_first_acquire_takes_a_free_lease(db: Database, clock: FakeClock) -> None:
    a = lease(db, clock, "a")
    assert a.current() is None
    assert not a.held

    assert a.acquire()

    assert a.held
    assert a.current() == LeaseInfo(
        name="rollouts", holder="a", expires_at=T0 + timedelta(seconds=TTL), acquired_at=T0
    )


def test_renewal_extends_the_term_and_keeps_acquired_at(db: Database, clock: FakeClock) -> None:
    a = lease(db, clock, "a")
    assert a.acquire()
    clock.advance(4)

    assert a.acquire()

    info = a.current()
    assert info is not None
    assert info.holder == "a"
    assert info.acquired_at == T0
    assert info.expires_at == T0 + timedelta(seconds=4 + TTL)


def test_another_holder_is_refused_while_the_term_lasts(db: Database, clock: FakeClock) -> None:
    a, b = lease(db, clock, "a"), lease(db, clock, "b")
    assert a.acquire()
    before = a.current()

    assert not b.acquire()
    clock.advance(TTL - 0.001)
    assert not b.acquire()

    assert not b.held
    assert a.held
    assert a.current() == before


def test_another_holder_takes_over_once_the_term_is_over(db: Database, clock: FakeClock) -> None:
    a, b = lease(db, clock, "a"), lease(db, clock, "b")
    assert a.acquire()
    # Exactly at expires_at the term is over: the instant `held` turns False is the instant
    # another may take it, with no gap and no overlap.
    clock.advance(TTL)
    assert not a.held

    assert b.acquire()

    assert b.held
    assert b.current() == LeaseInfo(
        name="rollouts",
        holder="b",
        expires_at=T0 + timedelta(seconds=2 * TTL),
        acquired_at=T0 + timedelta(seconds=TTL),
    )
    # The old holder cannot renew its way back in while the new term lasts.
    assert not a.acquire()
    assert not a.held


def test_a_holder_back_after_its_term_lapsed_starts_a_new_tenure(
    db: Database, clock: FakeClock
) -> None:
    a = lease(db, clock, "a")
    assert a.acquire()
    clock.advance(TTL + 5)

    assert a.acquire()

    info = a.current()
    assert info is not None
    assert info.acquired_at == T0 + timedelta(seconds=TTL + 5)


def test_held_follows_the_clock(db: Database, clock: FakeClock) -> None:
    a, b = lease(db, clock, "a"), lease(db, clock, "b")
    assert a.acquire()
    clock.advance(TTL / 2)
    assert a.held
    clock.advance(TTL / 2 - 0.001)
    assert a.held
    clock.advance(0.001)
    assert not a.held
    # A refused acquire also clears it, even on a clock still inside the old term.
    assert b.acquire()
    clock.now = T0
    assert not a.acquire()
    assert not a.held


def test_leases_with_different_names_are_independent(db: Database, clock: FakeClock) -> None:
    assert lease(db, clock, "a", name="rollouts").acquire()
    assert lease(db, clock, "b", name="scheduler").acquire()
    assert not lease(db, clock, "b", name="rollouts").acquire()


# release ------------------------------------------------------------------------------------


def test_release_lets_another_take_it_at_once(db: Database, clock: FakeClock) -> None:
    a, b = lease(db, clock, "a"), lease(db, clock, "b")
    assert a.acquire()
    clock.advance(1)

    a.release()

    assert not a.held
    info = a.current()
    assert info is not None
    assert (info.holder, info.expires_at) == ("a", T0 + timedelta(seconds=1))
    assert b.acquire()
    assert b.current() == LeaseInfo(
        name="rollouts",
        holder="b",
        expires_at=T0 + timedelta(seconds=1 + TTL),
        acquired_at=T0 + timedelta(seconds=1),
    )


def test_release_by_a_non_holder_does_nothing(db: Database, clock: FakeClock) -> None:
    a, b = lease(db, clock, "a"), lease(db, clock, "b")
    assert a.acquire()
    before = a.current()

    b.release()

    assert a.current() == before
    assert a.held
    assert not b.acquire()


def test_release_after_losing_the_lease_leaves_the_new_holder_alone(
    db: Database, clock: FakeClock
) -> None:
    a, b = lease(db, clock, "a"), lease(db, clock, "b")
    assert a.acquire()
    clock.advance(TTL)
    assert b.acquire()
    after_takeover = b.current()

    a.release()

    assert b.current() == after_takeover
    assert b.held


def test_release_of_a_never_taken_lease_does_nothing(db: Database, clock: FakeClock) -> None:
    a = lease(db, clock, "a")
    a.release()
    assert a.current() is None


# races --------------------------------------------------------------------------------------


def test_threads_racing_for_a_lease_get_one_winner_per_term(db: Database, clock: FakeClock) -> None:
    contenders = 8
    rounds = 5
    for round_number in range(rounds):
        name = f"race-{round_number}"
        leases = [lease(db, clock, f"thread-{i}", name=name) for i in range(contenders)]
        # First the race to INSERT a fresh row, then, one term later, the race to take it over
        # (the previous winner among the contenders, trying to renew).
        for phase in ("fresh", "expired"):
            won = _race_threads(leases)
            assert sum(won) == 1, f"round {round_number} ({phase}): winners {won}"
            winner = leases[won.index(True)]
            info = winner.current()
            assert info is not None
            assert info.holder == winner.holder
            assert [x.held for x in leases] == won
            clock.advance(TTL)


def _race_threads(leases: list[Lease]) -> list[bool]:
    start = threading.Barrier(len(leases))
    results: list[bool | None] = [None] * len(leases)

    def contend(index: int) -> None:
        start.wait()
        results[index] = leases[index].acquire()

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(leases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r is not None for r in results), "a contender did not finish"
    return [bool(r) for r in results]


# Each process makes one Lease per round on the real clock, connects, reports ready, then waits
# for a start time from stdin and calls acquire() at start + k * spacing for round k. Every
# process gets the same start time, so the rounds begin at the same instant in all of them.
_CONTENDER = """
import json, sys, time
from berth.store.db import Database
from berth.store.lease import Lease, process_holder

url, names, spacing = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
db = Database(url)
leases = [Lease(db, name, process_holder(), ttl_seconds=30) for name in names]
leases[0].current()  # connect now, so the race is on the statement alone
print(json.dumps({"ready": process_holder()}), flush=True)
start = float(sys.stdin.readline())
for index, lease in enumerate(leases):
    at = start + index * spacing
    if at - time.time() > 0.02:
        time.sleep(at - time.time() - 0.02)
    while time.time() < at:
        pass
    print(json.dumps([lease.name, lease.holder, lease.acquire()]), flush=True)
db.dispose()
"""


def test_processes_racing_for_a_lease_get_one_winner_per_term(db: Database) -> None:
    processes = 3
    rounds = 6
    names = [f"proc-race-{i}" for i in range(rounds)]
    # Odd rounds race for a lease whose row exists with a long-expired term (the take-over
    # UPDATE path); even rounds race to create the row.
    past = FakeClock(datetime(2000, 1, 1, tzinfo=UTC))
    for name in names[1::2]:
        assert lease(db, past, "ghost", name=name).acquire()

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, db.url, json.dumps(names), "0.25"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        holders = []
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline()
            assert line, f"contender failed to start: {worker.communicate(timeout=30)[1]}"
            holders.append(json.loads(line)["ready"])
        assert len(set(holders)) == processes

        # Every contender has the start time before any is waited for: handed over one
        # communicate() at a time, the later ones would hear it only after the first had
        # finished, and nothing would race.
        start = f"{time.time() + 0.5}\n"
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write(start)
            worker.stdin.flush()
        outputs = [worker.communicate(timeout=60) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err
    results: dict[str, list[tuple[str, bool]]] = {name: [] for name in names}
    for out, _ in outputs:
        for line in out.splitlines():
            name, holder, won = json.loads(line)
            results[name].append((holder, won))
    for name in names:
        assert len(results[name]) == processes
        winners = [holder for holder, won in results[name] if won]
        assert len(winners) == 1, f"{name}: {results[name]}"
        info = Lease(db, name, "observer").current()
        assert info is not None
        assert info.holder == winners[0]


# an unreachable database ---------------------------------------------------------------------


def _unreachable() -> Database:
    """A PostgreSQL URL on a loopback port nothing listens on (connecting fails at once)."""
    return Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=5")


def test_acquire_on_an_unreachable_database_returns_false(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    db = _unreachable()
    try:
        contender = Lease(db, "rollouts", "a", clock=clock)
        with caplog.at_level(logging.WARNING, logger="berth.rollouts"):
            assert not contender.acquire()
        assert not contender.held
        assert "cannot renew lease 'rollouts'" in caplog.text
        contender.release()  # must not raise either: it runs on shutdown paths
    finally:
        db.dispose()


def test_a_holder_that_loses_the_database_stops_holding(db: Database, clock: FakeClock) -> None:
    a = lease(db, clock, "a")
    assert a.acquire()
    lost = _unreachable()
    try:
        a.db = lost
        assert not a.acquire()
        assert not a.held
        a.release()
    finally:
        lost.dispose()
    # The database still records the term, so nobody else acts before it runs out either.
    assert not lease(db, clock, "b").acquire()


# the rest -----------------------------------------------------------------------------------


def test_lease_info_to_dict() -> None:
    info = LeaseInfo(
        name="rollouts", holder="h", expires_at=T0 + timedelta(seconds=10), acquired_at=T0
    )
    assert info.to_dict() == {
        "name": "rollouts",
        "holder": "h",
        "expires_at": "2030-01-01T12:00:10+00:00",
        "acquired_at": "2030-01-01T12:00:00+00:00",
    }


def test_naive_clock_readings_are_taken_as_utc(db: Database) -> None:
    naive = FakeClock(T0.replace(tzinfo=None))
    a = Lease(db, "rollouts", "a", ttl_seconds=TTL, clock=naive)
    assert a.acquire()
    assert a.held
    info = a.current()
    assert info is not None
    assert info.acquired_at == T0


@pytest.mark.parametrize(
    ("name", "holder", "ttl"),
    [
        ("", "a", 10.0),
        ("x" * 65, "a", 10.0),
        ("n", "", 10.0),
        ("n", "a" * 129, 10.0),
        ("n", "a", 0.0),
    ],
)
def test_bad_arguments_are_refused(db: Database, name: str, holder: str, ttl: float) -> None:
    with pytest.raises(InvalidInput):
        Lease(db, name, holder, ttl_seconds=ttl)


def test_process_holder_is_hostname_pid_and_suffix_and_stable() -> None:
    holder = process_holder()
    assert holder == process_holder()
    assert len(holder) <= 128
    host, pid, suffix = holder.rsplit(":", 2)
    assert host
    assert socket.gethostname().startswith(host)
    assert pid == str(os.getpid())
    assert re.fullmatch(r"[0-9a-f]{6}", suffix)


def test_process_holder_differs_in_a_forked_child() -> None:
    parent = process_holder()
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running pytest's teardown
        os.write(writer, process_holder().encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child
    assert child != parent
    assert child.split(":")[1] == str(pid)
