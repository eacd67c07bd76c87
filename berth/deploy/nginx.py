"""nginx in front of Berth replicas: one upstream, retries that never run a write twice.

`render()` writes a complete nginx.conf for a reverse proxy over N `berth serve` replicas and
`Nginx` runs it as a child process (`nginx -p DIR -c CONF -e LOG -g 'daemon off;'`), everything
it writes (pid, temp files, logs) inside one folder. It needs nginx 1.19.5 or newer (`-e`,
`keepalive_timeout` in an upstream); Debian 12 has 1.22.

Which requests nginx may send to another replica after a failure (`proxy_next_upstream`):

- Prediction routes (`/api/v1/.../predict`, `batch-predict`, `/v2/models/.../infer`) are POSTs,
  yet retried even after the request reached a replica that then failed (`non_idempotent`).
  That is safe because a prediction changes nothing but the prediction log: a retried one may
  leave one extra logged row (an id the client never saw, so no feedback joins it) and cost one
  more rate-limit token. In exchange a replica dying mid-request loses no client request.
- Every other route keeps nginx's rule for non-idempotent methods: a POST or PATCH (create a
  key, start a rollout or a job, send feedback) goes to another replica only if it could not be
  sent to the first one (connection refused or reset while connecting), never after a replica
  received it, since the write may have happened. GET and HEAD are retried. So are PUT and
  DELETE, which are idempotent in Berth: pointing an alias or setting routes twice is setting
  them once; a repeated delete or revocation changes nothing more (it may answer 404 or 409).
- Retried failures: connection errors, timeouts, and 502/503 (Berth's 503 means still loading,
  shedding load or a version that cannot load: the request was not served). Never 429 (limits
  are shared through Redis, another replica would say the same), 504 (the prediction took too
  long) or 500.

Passive health: a replica that fails `max_fails` times within `fail_timeout` gets no traffic
for `fail_timeout`, then one request tries it again. nginx counts the retried statuses as
failures, so a replica shedding load (503) is also rested for a while; when every replica is
out, nginx tries them all again rather than refusing. Keep-alive connections to the replicas are
closed by nginx after `upstream_keepalive` seconds, below uvicorn's 5 s: otherwise nginx could
reuse a connection the replica is closing, and a POST on it could not be retried.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from berth.errors import InvalidInput, NotFound, NotReady

PREDICTION_ROUTES = (
    r"^/(api/v1/((models|endpoints)/[^/]+/)?(batch-)?predict"
    r"|v2/models/[^/]+(/versions/[^/]+)?/infer)$"
)
"""The routes whose POSTs nginx may retry on another replica (see the module docstring)."""

UPLOAD_ROUTES = r"^/api/v1/(models/[^/]+/versions|validate)$"
"""The routes that take a model upload (to register it, or to validate it with its test rows):
BERTH_MAX_UPLOAD_BYTES instead of BERTH_MAX_BODY_BYTES, streamed to the replica as it arrives
(nginx would otherwise spool gigabytes to its own disk first, and the upload's timeout would
run twice), never retried once a replica received it."""

UVICORN_KEEPALIVE_SECONDS = 5.0
"""How long uvicorn keeps an idle connection open (its default, which `berth serve` keeps)."""


@dataclass(frozen=True)
class Replica:
    """One `berth serve` process nginx sends requests to."""

    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the rendered nginx.conf says; the defaults suit replicas on one network."""

    replicas: tuple[Replica, ...]
    """The upstream: every replica, tried round-robin."""
    port: int
    """Port nginx listens on."""
    state_dir: Path
    """Where nginx keeps its pid, temp files and logs."""
    host: str = "127.0.0.1"
    """Address nginx listens on."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest request body (BERTH_MAX_BODY_BYTES): larger ones get 413 from nginx already."""
    request_timeout_seconds: float = 30.0
    """Berth's BERTH_REQUEST_TIMEOUT_SECONDS; nginx waits a little longer, so Berth's 504 wins."""
    max_upload_bytes: int = 2 * 1024**3
    """Largest model upload (BERTH_MAX_UPLOAD_BYTES), on the upload routes only."""
    upload_timeout_seconds: float = 900.0
    """Berth's BERTH_UPLOAD_TIMEOUT_SECONDS; nginx waits a little longer, so Berth's 408 wins."""
    connect_timeout_seconds: float = 1.0
    """How long nginx waits for a replica to accept a connection before trying the next."""
    retry_window_seconds: float = 10.0
    """A request is not passed to another replica once it has been going on this long."""
    tries: int | None = None
    """Replicas one request may try; default all of them."""
    max_fails: int = 2
    """Failures within `fail_timeout_seconds` that take a replica out (0: never)."""
    fail_timeout_seconds: float = 5.0
    """How long a failing replica gets no traffic, and the window its failures count in (whole
    seconds: nginx takes no fraction here)."""
    keepalive_connections: int = 32
    """Idle connections to the replicas each nginx worker keeps open."""
    upstream_keepalive_seconds: float = UVICORN_KEEPALIVE_SECONDS - 1
    """How long nginx keeps an idle upstream connection: less than uvicorn does."""
    worker_processes: int = 1
    """nginx worker processes."""
    user: str | None = None
    """The `user` of nginx workers when it starts as root; None keeps nginx's default."""

    def __post_init__(self) -> None:
        if not self.replicas:
            raise InvalidInput("nginx needs at least one replica to send requests to")
        if self.tries is not None and self.tries < 1:
            raise InvalidInput("tries must be at least 1")
        if (
            min(self.max_body_bytes, self.max_upload_bytes, self.worker_processes) < 1
            or self.max_fails < 0
        ):
            raise InvalidInput(
                "max_body_bytes, max_upload_bytes and worker_processes must be at least 1, "
                "max_fails at least 0"
            )
        if self.upstream_keepalive_seconds >= UVICORN_KEEPALIVE_SECONDS:
            raise InvalidInput(
                f"upstream_keepalive_seconds must stay below uvicorn's {UVICORN_KEEPALIVE_SECONDS:g} s"
            )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def error_log(self) -> Path:
        return self.state_dir / "error.log"

    @property
    def access_log(self) -> Path:
        return self.state_dir / "access.log"


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _json_error(status: int, message: str) -> str:
    """An nginx `return` of Berth's error document (nginx expands `$` in it: none allowed)."""
    if any(c in message for c in "$'\\\"{}"):
        raise ValueError(f"message {message!r} must not contain $, quotes, backslashes or braces")
    return f'return {status} \'{{"error": "{message}"}}\';'


def _upstream(config: ProxyConfig) -> str:
    servers = "\n".join(
        f"        server {r.address} max_fails={config.max_fails} "
        f"fail_timeout={max(1, round(config.fail_timeout_seconds))}s;"
        for r in config.replicas
    )
    return f"""    upstream berth_replicas {{
{servers}
        keepalive {config.keepalive_connections};
        keepalive_timeout {_ms(config.upstream_keepalive_seconds)};
    }}"""


def _proxy(retry_on: str) -> str:
    return f"""            proxy_pass http://berth_replicas;
            proxy_next_upstream {retry_on};"""


def render(config: ProxyConfig) -> str:
    """The nginx.conf for `config`."""
    state = config.state_dir.resolve()
    tries = config.tries or len(config.replicas)
    user = f"user {config.user};\n" if config.user else ""
    too_large = (
        f"the request body is over {config.max_body_bytes} bytes (BERTH_MAX_BODY_BYTES); "
        "send fewer rows per request"
    )
    return f"""# Generated by berth.deploy.nginx: nginx in front of {len(config.replicas)} Berth replica(s).
{user}worker_processes {config.worker_processes};
pid {state}/nginx.pid;
error_log {config.error_log.resolve()} warn;

events {{
    worker_connections 1024;
}}

http {{
    server_tokens off;
    default_type application/octet-stream;
    client_body_temp_path {state}/client_body;
    proxy_temp_path {state}/proxy;
    fastcgi_temp_path {state}/fastcgi;
    uwsgi_temp_path {state}/uwsgi;
    scgi_temp_path {state}/scgi;

    # The caller's request id when Berth would accept it, else nginx's own: both log the same.
    map $http_x_request_id $berth_request_id {{
        "~^[A-Za-z0-9._:-]{{1,128}}$" $http_x_request_id;
        default $request_id;
    }}

    log_format berth '$remote_addr [$time_iso8601] "$request" $status $body_bytes_sent '
                     'request_id=$berth_request_id upstream=$upstream_addr '
                     'upstream_status=$upstream_status seconds=$request_time';
    access_log {config.access_log.resolve()} berth;

{_upstream(config)}

    server {{
        listen {config.host}:{config.port};

        client_max_body_size {config.max_body_bytes};
        client_body_buffer_size 1m;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $berth_request_id;
        proxy_connect_timeout {_ms(config.connect_timeout_seconds)};
        proxy_send_timeout {_ms(config.request_timeout_seconds + 5)};
        proxy_read_timeout {_ms(config.request_timeout_seconds + 5)};
        proxy_next_upstream_tries {tries};
        proxy_next_upstream_timeout {_ms(config.retry_window_seconds)};

        # Predictions change nothing but the prediction log: retried even once a replica had them.
        location ~ {PREDICTION_ROUTES} {{
{_proxy("error timeout http_502 http_503 non_idempotent")}
        }}

        # Uploads: their own size limit and timeouts, passed on as they arrive.
        location ~ {UPLOAD_ROUTES} {{
            client_max_body_size {config.max_upload_bytes};
            proxy_request_buffering off;
            proxy_send_timeout {_ms(config.upload_timeout_seconds + 5)};
            proxy_read_timeout {_ms(config.upload_timeout_seconds + 5)};
{_proxy("error timeout http_502 http_503")}
        }}

        # Everything else: POST and PATCH only when no replica received them.
        location / {{
{_proxy("error timeout http_502 http_503")}
        }}

        error_page 413 @too_large;
        error_page 502 @no_replica;
        error_page 504 @too_slow;
        location @too_large {{
            default_type application/json;
            add_header X-Request-ID $berth_request_id always;
            {_json_error(413, too_large)}
        }}
        location @no_replica {{
            default_type application/json;
            add_header X-Request-ID $berth_request_id always;
            {_json_error(502, "no Berth replica could answer; check that the berth serve processes run and see the nginx error log")}
        }}
        location @too_slow {{
            default_type application/json;
            add_header X-Request-ID $berth_request_id always;
            {_json_error(504, "no Berth replica answered in time; retry, or check the replicas")}
        }}
    }}
}}
"""


def find_nginx() -> str:
    """The nginx executable: on PATH, or Debian's /usr/sbin/nginx (not on every user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise NotFound(
            "nginx is not installed; install it (Debian/Ubuntu: `sudo apt-get install nginx`, "
            "macOS: `brew install nginx`) and try again"
        )
    return found


def _listening(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((host, port)) == 0


class Nginx:
    """nginx running `config` in the foreground as a child process; stop() ends it."""

    def __init__(self, config: ProxyConfig, executable: str | None = None) -> None:
        self.config = config
        self.executable = executable or find_nginx()
        self.conf_path = config.state_dir / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        state = str(self.config.state_dir.resolve())
        conf, log = str(self.conf_path.resolve()), str(self.config.error_log.resolve())
        return [self.executable, "-p", state, "-c", conf, "-e", log, *extra]

    def write(self) -> None:
        """Write the config and check it with `nginx -t`; a refusal names nginx's reason."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(render(self.config))
        checked = subprocess.run(
            self.command("-t", "-q"), capture_output=True, text=True, timeout=30, check=False
        )
        if checked.returncode != 0:
            raise InvalidInput(
                f"nginx refused the generated config {self.conf_path}: "
                f"{checked.stderr.strip() or checked.stdout.strip()}; fix the options or report it"
            )

    def start(self, timeout: float = 10.0) -> None:
        """Write the config, start nginx and wait until it accepts connections."""
        self.write()
        self.process = subprocess.Popen(
            self.command("-g", "daemon off;"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while self.process.poll() is None and time.monotonic() < deadline:
            if _listening(self.config.host, self.config.port):
                return
            time.sleep(0.05)
        self.stop()
        log = self.config.error_log
        tail = log.read_text()[-2000:] if log.exists() else "(no error log)"
        raise NotReady(f"nginx did not start listening on {self.config.url}: {tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT: requests in flight finish), then a kill after `timeout`."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


@dataclass(frozen=True)
class AccessEntry:
    """One line of the access log `render` configures."""

    status: int
    request_id: str
    upstreams: tuple[str, ...]
    """The replicas nginx tried, in order: more than one means it retried."""


_ACCESS_LINE = re.compile(
    r'" (?P<status>\d{3}) \d+ request_id=(?P<id>\S*) upstream=(?P<upstreams>.*?) upstream_status='
)
_UPSTREAM_SEPARATOR = re.compile(r", | : ")


def parse_access_log(text: str) -> list[AccessEntry]:
    """The entries of an access log written with the `berth` format (other lines skipped)."""
    entries = []
    for line in text.splitlines():
        found = _ACCESS_LINE.search(line)
        if found is None:
            continue
        upstreams = found["upstreams"]
        addresses = () if upstreams == "-" else tuple(_UPSTREAM_SEPARATOR.split(upstreams))
        entries.append(AccessEntry(int(found["status"]), found["id"], addresses))
    return entries


def worker_user() -> str | None:
    """As root, nginx workers run as this same user, so they may write temp files in our folder
    (nginx's default, nobody, may not even enter a private temp dir); otherwise None."""
    return pwd.getpwuid(0).pw_name if os.geteuid() == 0 else None
