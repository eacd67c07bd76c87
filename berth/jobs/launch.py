"""Start a recorded job in the background: `berth batch run ARGS --job ID` (or, for a backup,
`berth backup create ARGS --job ID`) as its own process, so a long job neither blocks nor shares
a fate with the server or scheduler that started it. Its output goes to `<home>/jobs/<id>.log`."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from berth.jobs.config import JobsConfig
from berth.jobs.kinds import BATCH, COMMANDS, rerun_command
from berth.jobs.records import JobInfo


def job_log(config: JobsConfig, job_id: int) -> Path:
    return config.log_dir / f"{job_id}.log"


def job_detail(config: JobsConfig, job: JobInfo) -> dict[str, Any]:
    """One job as `berth jobs show` and GET /api/v1/jobs/{id} give it: its record, its key, its
    log on the host that runs it (None until written), the command that runs it again, and
    what its run reported when it ended (`berth batch run` in remote mode prints that)."""
    log = job_log(config, job.id)
    return {
        **job.to_dict(),
        "job_key": job.job_key,
        "log": str(log) if log.exists() else None,
        "command": rerun_command(job.kind, job.args),
        "summary": job.summary,
    }


def launch(
    config: JobsConfig,
    job_id: int,
    args: Sequence[str],
    environment: Mapping[str, str] | None = None,
    kind: str = BATCH,
) -> subprocess.Popen[bytes]:
    """Run `berth batch run *args --job job_id --quiet` (a backup: `berth backup create *args
    --job job_id`) detached; the process inherits the environment (so the same registry and
    artifact store), or is given `environment`, and survives its parent."""
    log = job_log(config, job_id)
    log.parent.mkdir(parents=True, exist_ok=True)
    # `berth backup create` has no --quiet: its log is its report (no progress bar is drawn
    # when the output is not a terminal).
    quiet = ["--quiet"] if kind == BATCH else []
    command = [
        sys.executable,
        "-m",
        "berth.cli",
        *COMMANDS[kind][1:],
        *args,
        "--job",
        str(job_id),
        *quiet,
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=environment,
        )
    # Collect the exit status when the job ends, so a long-lived server that started it is not
    # left with a zombie per job (Popen's own lock keeps this safe beside a caller's poll()).
    threading.Thread(target=process.wait, name=f"berth-job-{job_id}", daemon=True).start()
    return process
