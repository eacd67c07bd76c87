"""`make cluster-demo`: three Berth replicas behind nginx on PostgreSQL and Redis, one killed.

`python -m berth.deploy.cluster_demo` registers the demo churn model in a fresh PostgreSQL
schema, starts the replicas and nginx (`berth.deploy.local_cluster`), sends load through nginx,
kills one replica with SIGKILL in the middle and prints what the clients saw (sent, failed,
p50/p99); `--keep` restarts it and stays up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shlex
import signal
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from pydantic import SecretStr

from berth.config import Settings, load_settings
from berth.deploy.local_cluster import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    PREDICT_PATH,
    ClusterConfig,
    LocalCluster,
    isolated_schema,
    kill_under_load,
    require_services,
)
from berth.deploy.nginx import find_nginx
from berth.errors import BerthError, InvalidInput
from berth.ops.http1 import HttpRequest


def _register_demo(database_url: str, workdir: Path, secret: str) -> tuple[str, bytes]:
    """Register churn@production and create a predict key; the key and an example body."""
    # Training and the registry bring pandas and scikit-learn: imported when the demo runs.
    from berth.demo_model import MODEL, train
    from berth.registration.service import RegisterRequest, register
    from berth.registry.service import Registry
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    settings = Settings(
        home=workdir / "home",
        database_url=database_url,
        artifact_url=str(workdir / "artifacts"),
        secret_key=SecretStr(secret),
    )
    registry = Registry.from_settings(settings)
    try:
        model, sample, signature, metrics = train(workdir / "train")
        version = register(
            registry,
            RegisterRequest(
                name=MODEL,
                path=model,
                sample=sample,
                signature=signature,
                metrics=metrics,
                aliases=("production",),
            ),
        )
        _, key = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings))).create(
            "cluster-demo", ("predict", "read")
        )
    finally:
        registry.db.dispose()
    return key, json.dumps({"features": (version.example or [{}])[0]}).encode()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m berth.deploy.cluster_demo",
        description="Three Berth replicas behind nginx on PostgreSQL and Redis; load, then "
        "one replica killed under it.",
    )
    parser.add_argument("--replicas", type=int, default=3, help="replicas to start (default 3)")
    parser.add_argument("--requests", type=int, default=2000, help="requests to send (2000)")
    parser.add_argument("--concurrency", type=int, default=8, help="client connections (8)")
    parser.add_argument(
        "--database-url", help="PostgreSQL (default BERTH_DATABASE_URL, else local)"
    )
    parser.add_argument("--redis-url", help="Redis (default BERTH_REDIS_URL, else local)")
    parser.add_argument("--keep", action="store_true", help="stay up until Ctrl-C")
    return parser


def _demo(args: argparse.Namespace) -> None:
    settings = load_settings()
    database_url = args.database_url or settings.database_url or DEFAULT_DATABASE_URL
    redis_url = args.redis_url or settings.redis_url or DEFAULT_REDIS_URL
    if args.replicas < 2:
        raise InvalidInput("--replicas must be at least 2: the demo kills one")
    require_services(database_url, redis_url)
    find_nginx()
    with (
        tempfile.TemporaryDirectory(prefix="berth-cluster-") as folder,
        isolated_schema(database_url) as url,
    ):
        workdir = Path(folder)
        secret = secrets.token_hex(32)
        print("Training and registering the demo churn model ...", flush=True)
        key, body = _register_demo(url, workdir, secret)
        config = ClusterConfig(
            database_url=url,
            redis_url=redis_url,
            artifact_url=str(workdir / "artifacts"),
            secret_key=secret,
            workdir=workdir,
            replicas=args.replicas,
            served=("churn@production",),
            max_body_bytes=settings.max_body_bytes,
            request_timeout_seconds=settings.request_timeout_seconds,
            max_upload_bytes=settings.max_upload_bytes,
            upload_timeout_seconds=settings.upload_timeout_seconds,
        )
        print(f"Starting {args.replicas} replicas and nginx ...", flush=True)
        with LocalCluster(config) as cluster:
            request = HttpRequest(
                f"{cluster.url}{PREDICT_PATH}",
                method="POST",
                headers={"Content-Type": "application/json"},
                body=body,
                api_key=key,
            )
            _announce(cluster, request)
            victim = 1
            print(
                f"\nSending {args.requests} requests; replica {victim} gets SIGKILL after a third"
            )
            figures = kill_under_load(cluster, request, args.requests, victim, args.concurrency)
            print(figures.summary(), flush=True)
            if args.keep:
                cluster.revive()
                print(f"\nReplica {victim} is back. The cluster stays up: Ctrl-C to stop.")
                threading.Event().wait()


def _announce(cluster: LocalCluster, request: HttpRequest) -> None:
    replicas = ", ".join(r.url for r in cluster.replicas)
    print(f"\nnginx: {cluster.url}  (replicas {replicas})")
    print(f"logs: {cluster.config.workdir}")
    print(
        f"curl -s {request.url} -H 'X-API-Key: {request.api_key}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(request.body.decode())}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _demo(args)
    except BerthError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("Stopped the replicas and nginx.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    # Ctrl-C and kill both stop everything cleanly, even where SIGINT came in ignored (a
    # background job of a script).
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, signal.default_int_handler)
    sys.exit(main())
