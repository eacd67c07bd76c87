"""Run uvicorn for `berth serve`; with several workers, as a lean supervisor process.

With `--workers N` the process that started them only watches them, yet it held everything the
CLI had imported (pandas, scikit-learn, the registry: 200 MB). `berth serve` therefore checks its
arguments, puts the options into `BERTH_*` variables and replaces itself (exec, same pid) with
`python -m berth.cli.supervisor`, which imports uvicorn, the settings and the server (not the
models, the CLI or the registry's command-line tools) and forks its workers from itself (see
berth.cli.worker_processes). Meanwhile a copy of the CLI checks the references in the registry;
no worker starts before it has exited 0. With one worker uvicorn runs the app in this process,
so `berth serve` calls `run` directly.
"""

from __future__ import annotations

from berth.cli.entry import exit_quietly_on_ctrl_c, release_ctrl_c

if __name__ == "__main__":
    # Ctrl-C while the supervisor still imports: no traceback (uvicorn takes it over once it runs).
    exit_quietly_on_ctrl_c()
    # `berth serve` held SIGINT over its exec into this process (berth.cli.entry.hold_ctrl_c).
    release_ctrl_c()

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn

from berth.api.coalesced_writes import CoalescingHttpToolsProtocol
from berth.cli.worker_processes import fork_workers_from_this_process
from berth.config import Settings, load_settings
from berth.observability.logging import configure_logging, logging_config
from berth.observability.multiprocess_values import use_cached_pid

log = logging.getLogger("berth.serve")

# prometheus_client's variable (berth.observability.metrics names it too; importing that module
# here would make its metrics before the variable is set).
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

CHECKER_ENV = "_BERTH_SERVE_CHECKER"
"""The pid of the copy of `berth serve` that checks the references (a child of this process,
which it was before the exec); not a BERTH_ setting: it is for this process only."""


def run(settings: Settings) -> None:
    """uvicorn with Berth's app factory; workers read every option from `BERTH_*` variables."""
    json_lines = (settings.log_format or ("console" if settings.dev else "json")) == "json"
    configure_logging(settings.log_level, json=json_lines)
    proxies = settings.trusted_proxies
    cert, key = settings.tls_cert_file, settings.tls_key_file
    with _worker_metrics(settings.workers) as metrics_directory:
        # After the metrics directory is set: the server's metrics are made at import.
        if settings.workers > 1 and settings.worker_preload:
            fork_workers_from_this_process()
        _wait_for_reference_check()
        if metrics_directory is not None:
            log.info("%d workers write their metrics to %s", settings.workers, metrics_directory)
        uvicorn.run(
            "berth.server:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level.lower(),
            # Applied again in every worker process: uvicorn's lines and ours share one format.
            log_config=logging_config(settings.log_level, json=json_lines),
            access_log=False,  # Berth's access log (BERTH_ACCESS_LOG) has the request id
            loop="uvloop",
            # A response's head and body leave in one write: a replica killed mid-response
            # never leaves a proxy with a head it can neither finish nor retry.
            http=CoalescingHttpToolsProtocol,
            timeout_graceful_shutdown=10,
            ssl_certfile=str(cert) if cert and key else None,
            ssl_keyfile=str(key) if cert and key else None,
            # X-Forwarded-For/-Proto are believed only from the proxies named in BERTH_TRUSTED_PROXIES.
            proxy_headers=bool(proxies),
            forwarded_allow_ips=",".join(proxies) if proxies else "",
        )


def _wait_for_reference_check() -> None:
    """Exit with the check's status when `berth serve`'s copy refused the references (it has
    printed why)."""
    checker = os.environ.pop(CHECKER_ENV, None)
    if checker is None:
        return
    _, status = os.waitpid(int(checker), 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(code if code > 0 else 1)


@contextmanager
def _worker_metrics(workers: int) -> Iterator[str | None]:
    """With several workers, a fresh private directory where each writes its metrics.

    `/metrics` in any worker merges the files of all (see berth.observability.metrics). The
    directory is new for every start, so no counts leak in from an earlier run, and removed after.
    """
    if workers <= 1:
        yield None
        return
    path = tempfile.mkdtemp(prefix="berth-metrics-")
    previous = os.environ.get(MULTIPROCESS_ENV)
    os.environ[MULTIPROCESS_ENV] = path
    use_cached_pid()
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROCESS_ENV, None)
        else:
            os.environ[MULTIPROCESS_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    run(load_settings())


if __name__ == "__main__":
    main()
