"""The console under a real `berth serve`: served by the worker processes' app factory, the
read-only switch reaching them, and BERTH_CONSOLE=false leaving the console out."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import create_key, iris_home, serving
from tests.console_client import csrf_of

pytestmark = pytest.mark.server


def test_berth_serve_has_a_read_only_console(tmp_path: Path, iris_files: tuple[Path, Path]) -> None:
    env = iris_home(tmp_path / "home", iris_files)
    key = create_key(env, "ops", "--scope", "admin")
    with (
        serving(env, "--console-read-only", "--workers", "2") as (url, _port),
        httpx.Client(base_url=url, follow_redirects=True) as client,
    ):
        form = client.get("/console/sign-in")
        assert form.status_code == 200
        signed = client.post(
            "/console/sign-in", data={"credential": key, "csrf": csrf_of(form.text)}
        )
        assert signed.status_code == 200  # followed to the overview
        assert "read-only console" in signed.text
        assert "ops" in signed.text
        assert key not in signed.text
        models = client.get("/console/models")
        assert 'href="/console/models/iris"' in models.text
        assert client.get("/console/static/htmx.min.js").status_code == 200
    off = {**env, "BERTH_CONSOLE": "false"}
    with serving(off) as (url, _port):
        assert httpx.get(f"{url}/console/sign-in").status_code == 404
        assert httpx.get(f"{url}/health").status_code == 200
