"""The variables a provider gives every job, with local values, for the local runner.

The run is a push to `main` of a repository named local/FOLDER; the commit is the working
tree's HEAD (`git rev-parse HEAD`), or `local-RUN` outside a git repository. A variable of the
same name in the environment wins (e.g. GITHUB_SHA=... berth ci run), except the files the
runner reads back (GITHUB_ENV, ...), which are always its own.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

BRANCH = "main"


def commit(root: Path, run_id: str) -> str:
    try:
        found = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return f"local-{run_id}"
    sha = found.stdout.strip()
    return sha if found.returncode == 0 and sha else f"local-{run_id}"


def github(root: Path, run_id: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The `github` context the workflow's expressions read (sha, ref, repository, ...)."""
    given = {
        "sha": environ.get("GITHUB_SHA") or commit(root, run_id),
        "ref": environ.get("GITHUB_REF") or f"refs/heads/{BRANCH}",
        "repository": environ.get("GITHUB_REPOSITORY") or f"local/{root.resolve().name}",
        "run_id": environ.get("GITHUB_RUN_ID") or run_id,
        "server_url": environ.get("GITHUB_SERVER_URL") or "local:",
    }
    return {
        **given,
        "ref_name": given["ref"].rsplit("/", 1)[-1],
        "repository_owner": given["repository"].split("/", 1)[0],
        "run_number": "1",
        "run_attempt": "1",
        "workspace": str(root),
        "actor": environ.get("USER") or "local",
        "event_name": "push",
        "workflow": "berth",
    }


def github_variables(context: Mapping[str, str]) -> dict[str, str]:
    """The GITHUB_* variables of every step, from the context."""
    names = ("sha", "ref", "ref_name", "repository", "repository_owner", "run_id",
             "run_number", "run_attempt", "server_url", "workspace", "actor", "event_name",
             "workflow")  # fmt: skip
    found = {f"GITHUB_{name.upper()}": context[name] for name in names}
    return {
        "CI": "true",
        **found,
        "RUNNER_OS": "Linux",
        "RUNNER_TEMP": tempfile.gettempdir(),
    }


def gitlab_variables(root: Path, run_id: str, environ: Mapping[str, str]) -> dict[str, str]:
    """GitLab's predefined variables with local values."""
    project = environ.get("CI_PROJECT_PATH") or f"local/{root.resolve().name}"
    server = environ.get("CI_SERVER_URL") or "local:"
    pipeline = environ.get("CI_PIPELINE_ID") or run_id
    registry = "registry.local"
    return {
        "CI": "true",
        "CI_COMMIT_SHA": environ.get("CI_COMMIT_SHA") or commit(root, run_id),
        "CI_COMMIT_BRANCH": BRANCH,
        "CI_COMMIT_REF_NAME": BRANCH,
        "CI_DEFAULT_BRANCH": BRANCH,
        "CI_PIPELINE_ID": pipeline,
        "CI_PIPELINE_SOURCE": "push",
        "CI_PIPELINE_URL": f"{server}/{project}/-/pipelines/{pipeline}",
        "CI_PROJECT_DIR": str(root),
        "CI_PROJECT_PATH": project,
        "CI_SERVER_URL": server,
        "CI_REGISTRY": registry,
        "CI_REGISTRY_IMAGE": f"{registry}/{project}",
        "CI_REGISTRY_USER": "local",
        "CI_REGISTRY_PASSWORD": "local-stand-in",
    }
