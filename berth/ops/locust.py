"""Locustfiles: the request `berth bench` would send, for teams that run their load with Locust.

The API key is never written into the file: the file reads `BERTH_API_KEY` when Locust starts.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from berth.ops.http1 import HttpRequest

KEY_VARIABLE = "BERTH_API_KEY"


def locustfile(
    request: HttpRequest, path: Path, users: int, rate: float | None = None, run_time: str = "30s"
) -> str:
    """Python source of a locustfile, to be saved at `path`, sending `request`. With `rate`
    (requests per second over all `users`) each user keeps its share; without, users send
    back to back."""
    pacing = "constant" if rate is None else "constant_throughput"
    wait = "constant(0)" if rate is None else f"constant_throughput({rate / users!r})"
    pace = "back to back" if rate is None else f"{rate:g} requests/s over {users} users"
    call = (
        "self.client.post(PATH, data=BODY, headers=HEADERS)"
        if request.method == "POST"
        else "self.client.get(PATH, headers=HEADERS)"
    )
    hint = "\n".join(f"#{line}" for line in run_hint(path, users, run_time).splitlines())
    # comments, not a docstring: a URL cannot end a comment early (it has no line breaks)
    return f'''# Locust load test for {request.method} {request.url}
# written by `berth bench --locust`. Run it with:
#
{hint}

from __future__ import annotations

import os

from locust import FastHttpUser, {pacing}, task

HOST = {request.origin!r}
PATH = {request.target!r}
BODY = {request.body.decode("utf-8", "replace")!r}
HEADERS = {dict(request.headers)!r}
# The key comes from the environment when Locust starts; it is never stored in this file.
if os.environ.get({KEY_VARIABLE!r}):
    HEADERS["X-API-Key"] = os.environ[{KEY_VARIABLE!r}]


class BerthUser(FastHttpUser):
    """Sends the request {pace}."""

    host = HOST
    wait_time = {wait}

    @task
    def call(self) -> None:
        {call}
'''


def run_hint(path: Path, users: int, duration: str = "30s") -> str:
    """How to run the locustfile at `path`, as shell lines."""
    return (
        f"    pip install locust\n"
        f"    export {KEY_VARIABLE}=<your key>\n"
        f"    locust -f {shlex.quote(str(path))} --headless --users {users} --spawn-rate {users} --run-time {duration}"
    )
