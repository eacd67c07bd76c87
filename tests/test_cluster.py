"""Three `berth serve` replicas behind nginx, sharing PostgreSQL, Redis and one artifact store.

One cluster for the module (starting replicas is the slow part): a fresh PostgreSQL schema, a
temporary artifact folder, the shared Redis (rate-limit buckets are named by key, and every key
here has a unique name; cache entries by version digest and input). Checked, with figures
printed under `-s`:

- an alias moved through one replica's admin API is served by every replica within 2 s;
- a canary started through one replica's admin API splits traffic identically on every replica,
  and its promotion through another moves every replica;
- a key's rate limit holds in total over the three replicas, not per replica;
- a prediction cached by one replica is a cache hit on the others;
- killing one replica with SIGKILL under load loses no request (nginx retries on the next);
- nginx passes the request id and the client address on.

Without the cluster: the generated nginx config retries predictions but not admin POSTs on a
replica that fails mid-request, and missing services are named in the error.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from berth.config import Settings
from berth.deploy.local_cluster import (
    ClusterConfig,
    LocalCluster,
    kill_under_load,
    require_services,
)
from berth.deploy.nginx import (
    AccessEntry,
    Nginx,
    ProxyConfig,
    Replica,
    find_nginx,
    parse_access_log,
    worker_user,
)
from berth.errors import InvalidInput, NotFound, NotReady
from berth.ops.http1 import HttpRequest
from berth.ops.loadtest import Load, LoadTest, run_async
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.security.config import KeyConfig
from berth.security.keys import KeyService, server_secret
from berth.security.ratelimit import KEY_PREFIX, parse_rate
from berth.serving.router import key_unit
from tests.conftest import postgres_schema, register_churn, require_service
from tests.ports import free_port

pytestmark = [pytest.mark.server, pytest.mark.postgres]

REDIS_URL = "redis://127.0.0.1:6379/0"
LIMITED_RATE = "20/m"  # a bucket of 20 that refills one token per 3 s: a burst sees ~20
PREDICT = "/api/v1/models/churn/predict"


def _require_nginx() -> None:
    try:
        find_nginx()
    except NotFound as exc:
        require_service("nginx", exc.message)


def _require_redis() -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        require_service(f"Redis at {REDIS_URL}", str(exc))
    finally:
        client.close()


UPLOAD_BODY_LIMIT = 32 * 1024


@pytest.fixture(scope="module")
def schema_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh schema for the module (conftest's `postgres_url` is per test)."""
    with postgres_schema() as url:
        yield url


@dataclass(frozen=True)
class Stack:
    cluster: LocalCluster
    registry: Registry
    admin: dict[str, str]
    predict_key: str
    limited_key: str
    versions: tuple[VersionInfo, VersionInfo]
    """churn:1 (production when the cluster started) and churn:2."""
    client: httpx.Client

    @property
    def example(self) -> dict[str, Any]:
        return dict((self.versions[0].example or [{}])[0])


@pytest.fixture(scope="module")
def module_stack(
    schema_url: str,
    churn_files: tuple[Path, Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    """churn:1 (production) and churn:2 registered, three keys, then the cluster started."""
    _require_nginx()
    _require_redis()
    folder = tmp_path_factory.mktemp("cluster")
    secret = uuid.uuid4().hex
    settings = Settings(
        home=folder / "home",
        database_url=schema_url,
        artifact_url=str(folder / "artifacts"),
        secret_key=SecretStr(secret),
    )
    registry = Registry.from_settings(settings)
    try:
        first = register_churn(registry, churn_files)
        second = register_churn(registry, churn_files, aliases=())
        keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
        tag = uuid.uuid4().hex[:8]  # rate-limit buckets in the shared Redis are named by key
        _, admin_key = keys.create(f"admin-{tag}", ("admin",))
        _, predict_key = keys.create(f"load-{tag}", ("predict",))
        _, limited_key = keys.create(f"limited-{tag}", ("predict",), rate=LIMITED_RATE)
        config = ClusterConfig(
            database_url=schema_url,
            redis_url=REDIS_URL,
            artifact_url=str(folder / "artifacts"),
            secret_key=secret,
            workdir=folder / "cluster",
            served=("churn@production",),
            # Below the churn artifact's size: its upload must pass on the upload route only.
            max_body_bytes=UPLOAD_BODY_LIMIT,
            environment={k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
            settings={
                "BERTH_LOG_LEVEL": "warning",
                "BERTH_CONTROLLER_INTERVAL_SECONDS": "0.2",
                "BERTH_MODELS": json.dumps({"churn": {"cache": True}}),
                # Open routes are limited per client address, in Redis shared with other tests.
                "BERTH_OPEN_ROUTE_RATE": "100000/s",
            },
        )
        started = time.monotonic()
        with LocalCluster(config) as cluster, httpx.Client(timeout=30) as client:
            print(f"\n3 replicas and nginx ready in {time.monotonic() - started:.1f} s")
            admin = {"X-API-Key": admin_key}
            yield Stack(cluster, registry, admin, predict_key, limited_key, (first, second), client)
    finally:
        registry.db.dispose()


@pytest.fixture
def stack(module_stack: Stack) -> Stack:
    """The module's cluster with every replica up (the kill test leaves one dead)."""
    revived = module_stack.cluster.revive()
    if revived:
        print(f"\nrestarted replicas {revived}")
        _until_nginx_sends_to_every_replica(module_stack)
    return module_stack


def _until_nginx_sends_to_every_replica(stack: Stack, seconds: float = 15.0) -> None:
    """nginx takes a replica that failed out for fail_timeout; wait until it is back in."""
    everyone = {f"127.0.0.1:{r.port}" for r in stack.cluster.replicas}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        offset = stack.cluster.access_log_size()
        for _ in range(2 * len(everyone)):
            stack.client.get(f"{stack.cluster.url}/ready")
        if {e.upstreams[-1] for e in _access_since(stack, offset) if e.upstreams} == everyone:
            return
        time.sleep(0.5)
    raise AssertionError(f"nginx did not send requests to every replica within {seconds} s")


# helpers -------------------------------------------------------------------------------------


def _version_answering(base: str, path: str, stack: Stack, headers: dict[str, str]) -> str | None:
    """The version that answers a prediction; None while the replica does not serve `path`."""
    response = stack.client.post(
        f"{base}{path}", json={"features": stack.example}, headers={**stack.admin, **headers}
    )
    if response.status_code == 404 and "is served here" in response.text:
        return None  # an endpoint this replica has not read from the registry yet
    assert response.status_code == 200, response.text
    return str(response.headers["X-Berth-Model-Version"])


def _until_every_replica(
    stack: Stack, condition: Callable[[str], bool], since: float, seconds: float = 10.0
) -> list[float]:
    """Seconds from `since` until `condition(replica_url)` held on each replica, by replica."""
    delays: dict[int, float] = {}
    deadline = time.monotonic() + seconds
    while len(delays) < len(stack.cluster.replicas) and time.monotonic() < deadline:
        for replica in stack.cluster.replicas:
            if replica.index not in delays and condition(replica.url):
                delays[replica.index] = time.monotonic() - since
        time.sleep(0.02)
    missing = [r.index for r in stack.cluster.replicas if r.index not in delays]
    assert not missing, f"replicas {missing} did not converge within {seconds} s"
    return [delays[i] for i in sorted(delays)]


def _show(delays: list[float]) -> str:
    return ", ".join(f"replica {i}: {d:.2f} s" for i, d in enumerate(delays))


# the cluster ---------------------------------------------------------------------------------


def test_an_alias_moved_through_one_replica_is_served_by_all_within_2_s(
    stack: Stack, churn_files: tuple[Path, Path, Path]
) -> None:
    new = register_churn(stack.registry, churn_files, aliases=())
    first = stack.cluster.replicas[0]
    changed = time.monotonic()
    moved = stack.client.put(
        f"{first.url}/api/v1/models/churn/aliases/production",
        json={"version": new.number},
        headers=stack.admin,
    )
    assert moved.status_code == 200, moved.text

    def serves_new(base: str) -> bool:
        return _version_answering(base, PREDICT, stack, {}) == new.ref

    delays = _until_every_replica(stack, serves_new, since=changed)
    print(f"\n{new.ref} served after the alias moved: {_show(delays)}")
    assert max(delays) < 2.0, delays


def test_a_rollout_started_on_one_replica_moves_traffic_on_all(stack: Stack) -> None:
    old, new = stack.versions
    replicas = stack.cluster.replicas
    path = "/api/v1/endpoints/churn-live/predict"
    users = [f"user-{i}" for i in range(40)]
    # Sticky routing is weighted rendezvous hashing: at 50/50 a user goes to the version whose
    # hash of (user, version) is larger, the same on every replica.
    on_canary = {u for u in users if key_unit(u, new.ref) > key_unit(u, old.ref)}
    canary_user, stable_user = min(on_canary), min(set(users) - on_canary)

    def answer(user: str) -> Callable[[str], str | None]:
        return lambda base: _version_answering(base, path, stack, {"X-User-ID": user})

    def assignment(base: str) -> dict[str, str | None]:
        return {u: answer(u)(base) for u in users}

    created = stack.client.post(
        f"{replicas[0].url}/api/v1/endpoints",
        json={"name": "churn-live", "model": old.ref, "sticky": "header:X-User-ID"},
        headers=stack.admin,
    )
    assert created.status_code == 201, created.text
    _until_every_replica(stack, lambda b: answer(stable_user)(b) == old.ref, time.monotonic())
    started = stack.client.post(
        f"{replicas[0].url}/api/v1/rollouts",
        json={
            "endpoint": "churn-live",
            "to": new.ref,
            "strategy": "canary",
            "steps": [50, 100],
            "interval": "10m",  # stays at 50% for the test
        },
        headers=stack.admin,
    )
    assert started.status_code == 201, started.text
    rollout = started.json()["rollout"]["id"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = stack.client.get(f"{replicas[1].url}/api/v1/rollouts/{rollout}", headers=stack.admin)
        if info.json()["phase"] == "step":
            break
        time.sleep(0.05)
    assert info.json()["weight"] == 50.0, info.json()
    at_step = time.monotonic()

    delays = _until_every_replica(stack, lambda b: answer(canary_user)(b) == new.ref, at_step)
    seen = [assignment(replica.url) for replica in replicas]
    expected = {u: new.ref if u in on_canary else old.ref for u in users}
    assert seen == [expected] * 3
    print(
        f"\ncanary at 50% on every replica ({len(on_canary)} of {len(users)} users on "
        f"{new.ref}, as the hash says): {_show(delays)}"
    )
    assert max(delays) < 2.0, delays

    promoted = stack.client.post(
        f"{replicas[2].url}/api/v1/endpoints/churn-live/rollout/promote", headers=stack.admin
    )
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "promoted"
    changed = time.monotonic()
    delays = _until_every_replica(stack, lambda b: answer(stable_user)(b) == new.ref, changed)
    assert [assignment(replica.url) for replica in replicas] == [dict.fromkeys(users, new.ref)] * 3
    print(f"promotion through replica 2 applied on every replica: {_show(delays)}")
    assert max(delays) < 2.0, delays


def test_a_key_rate_limit_holds_in_total_across_replicas(stack: Stack) -> None:
    rate = parse_rate(LIMITED_RATE)
    request_id = f"ratelimit-{uuid.uuid4().hex}"
    offset = stack.cluster.access_log_size()
    burst = HttpRequest(
        f"{stack.cluster.url}{PREDICT}",
        method="POST",
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
        body=json.dumps({"features": stack.example}).encode(),
        api_key=stack.limited_key,
    )
    result = run_async(LoadTest(burst, Load(concurrency=6, requests=120)).run())
    ok, refused = result.status_codes.get(200, 0), result.status_codes.get(429, 0)
    logged = _access_since(stack, offset, at_least=120)
    entries = [e for e in logged if e.request_id == request_id]
    per_replica = {address: 0 for e in entries for address in e.upstreams}
    for entry in entries:
        per_replica[entry.upstreams[-1]] += 1
    print(
        f"\n{result.requests} requests in {result.duration:.2f} s at {LIMITED_RATE}: {ok} "
        f"answered, {refused} refused (429); requests per replica {sorted(per_replica.values())}"
    )
    assert ok + refused == result.requests == 120, result.to_dict()
    assert len(per_replica) == 3  # nginx spread the burst over every replica
    # The bucket starts full (20 tokens) and refills 1 per 3 s while the burst lasts; three
    # replicas counting on their own would allow 60.
    assert rate.count <= ok <= rate.count + int(result.duration * rate.per_second) + 1


def test_a_prediction_cached_by_one_replica_is_a_hit_on_the_others(stack: Stack) -> None:
    row = {**stack.example, "monthly_charges": round(20 + uuid.uuid4().int % 10_000 / 100, 2)}

    def cache_of(base: str) -> str:
        response = stack.client.post(
            f"{base}{PREDICT}", json={"features": row}, headers=stack.admin
        )
        assert response.status_code == 200, response.text
        return response.headers["X-Berth-Cache"]

    first, *others = stack.cluster.replicas
    assert cache_of(first.url) == "miss"
    # The entry is stored in Redis after the answer, off the hot path: once the first replica
    # itself hits, it is there, and the others have never seen the row.
    deadline = time.monotonic() + 5
    while cache_of(first.url) != "hit":
        assert time.monotonic() < deadline, "the first replica never stored its entry"
        time.sleep(0.05)
    assert [cache_of(replica.url) for replica in others] == ["hit", "hit"]


def test_nginx_passes_the_request_id_and_the_client_address(stack: Stack) -> None:
    offset = stack.cluster.access_log_size()
    mine = stack.client.get(f"{stack.cluster.url}/ready", headers={"X-Request-ID": "trace-42.a"})
    assert mine.headers["X-Request-ID"] == "trace-42.a"
    generated = stack.client.get(f"{stack.cluster.url}/ready").headers["X-Request-ID"]
    assert len(generated) == 32  # nginx's $request_id, which Berth kept
    logged = {entry.request_id for entry in _access_since(stack, offset, at_least=2)}
    assert {"trace-42.a", generated} <= logged

    # Berth believes nginx's X-Forwarded-For: the open-route bucket is the client's address.
    address = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
    health = stack.client.get(f"{stack.cluster.url}/health", headers={"X-Forwarded-For": address})
    assert health.status_code == 200
    client = redis.Redis.from_url(REDIS_URL)
    try:
        assert client.exists(f"{KEY_PREFIX}address:{address}") == 1
    finally:
        client.close()


def test_an_upload_larger_than_the_body_limit_passes_nginx_on_the_upload_routes_only(
    stack: Stack, churn_files: tuple[Path, Path, Path]
) -> None:
    model, sample, _signature = churn_files
    assert model.stat().st_size > UPLOAD_BODY_LIMIT
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    with model.open("rb") as artifact, sample.open("rb") as rows:
        response = stack.client.post(
            f"{stack.cluster.url}/api/v1/models/uploaded/versions",
            headers=stack.admin,
            files={"artifact": (model.name, artifact), "sample": (sample.name, rows)},
            data={"metadata": json.dumps({"sha256": digest})},
        )
    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == digest
    assert stack.registry.resolve("uploaded:1").artifact.sha256 == digest
    # Validating a candidate is an upload too.
    gates = {"gates": {"no_nan": True}, "sha256": digest}
    with model.open("rb") as artifact, sample.open("rb") as rows:
        validated = stack.client.post(
            f"{stack.cluster.url}/api/v1/validate",
            headers=stack.admin,
            files={
                "artifact": (model.name, artifact),
                "data": (sample.name, rows),
                "request": (None, json.dumps(gates).encode(), "application/json"),
            },
        )
    assert validated.status_code == 200, validated.text
    assert validated.json()["passed"] is True
    # The same size anywhere else is refused by nginx, with Berth's error document.
    refused = stack.client.post(
        f"{stack.cluster.url}/api/v1/models/churn/predict",
        content=b"x" * model.stat().st_size,
        headers={**stack.admin, "Content-Type": "application/json"},
    )
    assert refused.status_code == 413, refused.text
    assert f"over {UPLOAD_BODY_LIMIT} bytes" in refused.json()["error"]


def test_killing_a_replica_under_load_loses_no_request(stack: Stack) -> None:
    victim = 2
    request = HttpRequest(
        f"{stack.cluster.url}{PREDICT}",
        method="POST",
        headers={"Content-Type": "application/json"},
        body=json.dumps({"features": stack.example}).encode(),
        api_key=stack.predict_key,
    )
    figures = kill_under_load(stack.cluster, request, requests=600, victim=victim)
    process = stack.cluster.replicas[victim].process
    assert process is not None
    print(f"\nreplica {victim} killed under load: {figures.summary()}")
    assert process.returncode == -9
    assert figures.sent == 600
    assert figures.failed == 0, figures.summary()
    assert figures.status_codes == {200: 600}
    # The kill did hit traffic: nginx had to send some requests to a second replica.
    assert figures.retried >= 1
    # (The `stack` fixture restarts the replica if another test of this module runs after.)


def _access_since(stack: Stack, offset: int, at_least: int = 1) -> list[AccessEntry]:
    """nginx's access-log entries after `offset`, once `at_least` of them are written (nginx
    writes a line just after its answer, so the last one may lag behind a loaded client)."""
    log = stack.cluster.nginx.config.access_log
    deadline = time.monotonic() + 5
    while True:
        with log.open("rb") as handle:
            handle.seek(offset)
            entries = parse_access_log(handle.read().decode())
        if len(entries) >= at_least or time.monotonic() > deadline:
            return entries
        time.sleep(0.02)


# nginx alone ---------------------------------------------------------------------------------


class CrashingReplica:
    """A stand-in for a replica that dies on every request: reads it, closes without answering."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with connection:
                connection.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.split(b"\r\n", 1)[0])

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def crashing_proxy(tmp_path: Path) -> Iterator[tuple[Nginx, list[CrashingReplica]]]:
    _require_nginx()
    replicas = [CrashingReplica(), CrashingReplica()]
    config = ProxyConfig(
        replicas=tuple(Replica("127.0.0.1", r.port) for r in replicas),
        port=free_port(),
        state_dir=tmp_path / "nginx",
        max_body_bytes=1000,
        max_fails=0,  # keep both in rotation, so every request may try both
        user=worker_user(),
    )
    nginx = Nginx(config)
    nginx.start()
    yield nginx, replicas
    nginx.stop()
    for replica in replicas:
        replica.close()


@pytest.mark.parametrize(
    ("method", "path", "attempts"),
    [
        ("POST", "/api/v1/models/churn/predict", 2),
        ("POST", "/api/v1/endpoints/churn/batch-predict", 2),
        ("POST", "/api/v1/predict", 2),
        ("POST", "/v2/models/churn/versions/3/infer", 2),
        ("GET", "/api/v1/models", 2),
        ("PUT", "/api/v1/models/churn/aliases/production", 2),
        ("POST", "/api/v1/keys", 1),
        ("POST", "/api/v1/rollouts", 1),
        ("POST", "/api/v1/feedback", 1),
    ],
)
def test_predictions_are_retried_after_a_replica_fails_mid_request_admin_posts_are_not(
    crashing_proxy: tuple[Nginx, list[CrashingReplica]], method: str, path: str, attempts: int
) -> None:
    nginx, replicas = crashing_proxy
    response = httpx.request(
        method, f"{nginx.config.url}{path}", content=b"{}", headers={"X-Request-ID": "r-1"}
    )
    assert response.status_code == 502
    assert response.headers["X-Request-ID"] == "r-1"
    assert "no Berth replica could answer" in response.json()["error"]
    tried = sum(len(r.requests) for r in replicas)
    assert tried == attempts, [r.requests for r in replicas]


def test_nginx_refuses_bodies_over_berths_limit_with_berths_error_shape(
    crashing_proxy: tuple[Nginx, list[CrashingReplica]],
) -> None:
    nginx, replicas = crashing_proxy
    response = httpx.post(f"{nginx.config.url}{PREDICT}", content=b"x" * 1001)
    assert response.status_code == 413
    assert "over 1000 bytes (BERTH_MAX_BODY_BYTES)" in response.json()["error"]
    assert all(not r.requests for r in replicas)


def test_a_missing_postgresql_is_named_with_how_to_start_it() -> None:
    closed = free_port()
    with pytest.raises(NotReady, match=r"PostgreSQL at .* is not reachable .* start it"):
        require_services(f"postgresql+psycopg://postgres@127.0.0.1:{closed}/test", REDIS_URL)


def test_a_missing_redis_is_named_with_how_to_start_it(schema_url: str) -> None:
    closed = free_port()
    with pytest.raises(NotReady, match=r"Redis at .* is not reachable .* start it"):
        require_services(schema_url, f"redis://127.0.0.1:{closed}/0")


def test_sqlite_is_refused_since_replicas_share_one_registry(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="replicas must share one registry"):
        require_services(f"sqlite:///{tmp_path}/registry.db", REDIS_URL)
