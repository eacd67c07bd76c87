"""`berth ci run`: run a pipeline file's jobs on this machine, as the provider would.

Jobs run one after another, each after the jobs it needs; each step's bash runs in the
repository's folder with the variables the provider would give it (`provider_env`), the
pipeline's and the job's, and the secrets of this environment by name. What only the provider
has is replaced by the stand-ins of `standins` (actions, pip, docker, approvals). Every step is
printed with its time. The first failing step fails its job: the job's failure handling runs
(`if: failure()` steps, GitLab's after_script), the jobs that need it are skipped, and the run
fails.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from berth.ci import github_plan, gitlab_plan, provider_env, standins
from berth.ci.pipeline import Condition, Job, Pipeline, Step
from berth.ci.shell import MARKER, TIMED_OUT, Shell
from berth.errors import InvalidInput

SUCCESS, FAILURE, SKIPPED = "success", "failure", "skipped"
_SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET", re.IGNORECASE)
_SHORTEST_MASKED = 6


@dataclass
class JobResult:
    job: Job
    status: str
    seconds: float = 0.0
    reason: str = ""


@dataclass
class RunResult:
    jobs: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not any(r.status == FAILURE and not r.job.allow_failure for r in self.jobs)


def read_pipeline(
    provider: str, path: Path, root: Path, run_id: str, environ: Mapping[str, str]
) -> Pipeline:
    import yaml

    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInput(
            f"no {path}; write it with `berth ci init --provider {provider}`, or give --file"
        ) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if provider == "github":
        context = provider_env.github(root, run_id, environ)
        return github_plan.read(path, document, context, environ)
    return gitlab_plan.read(path, document, environ)


class Runner:
    def __init__(
        self,
        pipeline: Pipeline,
        root: Path,
        environ: Mapping[str, str],
        run_id: str,
        write: Callable[[str], None],
        approve: bool = True,
    ) -> None:
        self.pipeline = pipeline
        self.root = root
        self.write = write
        self.approve = approve
        self.scratch = Path(tempfile.mkdtemp(prefix="berth-ci-run-"))
        bin_dir = standins.write_bin(self.scratch / "bin")
        self.base = {**environ, **self._provider_variables(run_id, environ)}
        self.base["PATH"] = f"{bin_dir}:{environ.get('PATH', '/usr/bin:/bin')}"
        self.carried: dict[str, str] = {}
        """Variables jobs hand on (GitLab's dotenv reports)."""
        self.secrets = sorted(
            {
                v
                for k, v in environ.items()
                if _SECRET_NAME.search(k) and len(v) >= _SHORTEST_MASKED
            },
            key=len,
            reverse=True,
        )
        self.shell = Shell(write, self._mask)

    def _provider_variables(self, run_id: str, environ: Mapping[str, str]) -> dict[str, str]:
        if self.pipeline.provider == "github":
            return provider_env.github_variables(provider_env.github(self.root, run_id, environ))
        return provider_env.gitlab_variables(self.root, run_id, environ)

    def _mask(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, "***")
        return line

    # the run ---------------------------------------------------------------------------

    def run(self) -> RunResult:
        pipeline = self.pipeline
        self.write(
            f"berth ci run: {pipeline.path} ({_PROVIDERS[pipeline.provider]}) in {self.root}"
        )
        self.write("jobs: " + " -> ".join(job.id for job in pipeline.jobs))
        for note in pipeline.notes:
            self.write(f"note: {note}")
        started = time.monotonic()
        result = RunResult()
        outcomes: dict[str, JobResult] = {}
        try:
            for job in pipeline.jobs:
                outcome = self._job(job, outcomes)
                outcomes[job.id] = outcome
                result.jobs.append(outcome)
        finally:
            shutil.rmtree(self.scratch, ignore_errors=True)
        result.seconds = time.monotonic() - started
        self._summary(result)
        return result

    def _job(self, job: Job, outcomes: Mapping[str, JobResult]) -> JobResult:
        self.write("")
        upstream_failed = self._upstream_failed(job, outcomes)
        waiting = [n for n in job.needs if outcomes[n].status != SUCCESS]
        if not _runs(job.condition, upstream_failed, bool(waiting)):
            why = f"needs {', '.join(waiting)}" if waiting else f"runs only on {job.condition}"
            self.write(f"== {job.id}: skipped ({why})")
            return JobResult(job, SKIPPED, reason=why)
        self.write(f"== {job.id}: {job.title}")
        for note in job.notes:
            self.write(f"   note: {note}")
        if job.approval is not None:
            if not self.approve:
                self.write(f"   approval: {job.approval}: not given (--no-approve); not run")
                return JobResult(job, SKIPPED, reason="not approved")
            self.write(f"   approval: {job.approval}: given here (--approve)")
        started = time.monotonic()
        try:
            failed = self._one_shell(job) if job.one_shell else self._steps(job)
        finally:
            self.shell.stop()
        seconds = time.monotonic() - started
        status = FAILURE if failed else SUCCESS
        if status == SUCCESS:
            self._carry(job)
        allowed = " (allowed to fail)" if failed and job.allow_failure else ""
        self.write(f"== {job.id}: {status}{allowed} in {seconds:.1f} s")
        return JobResult(job, status, seconds, reason=failed or "")

    def _upstream_failed(self, job: Job, outcomes: Mapping[str, JobResult]) -> bool:
        for need in job.needs:
            outcome = outcomes[need]
            if outcome.status == FAILURE and not outcome.job.allow_failure:
                return True
            if outcome.status == SKIPPED and self._upstream_failed(outcome.job, outcomes):
                return True
        return False

    # GitHub: a shell per step ------------------------------------------------------------

    def _steps(self, job: Job) -> str | None:
        """Run the job's steps; the first failure (a description), or None."""
        failed: str | None = None
        extra: dict[str, str] = {}
        paths: list[str] = []
        for index, step in enumerate(job.steps, 1):
            label = f"-- step {index}/{len(job.steps)}: {step.name}"
            if not _runs(step.condition, failed is not None, failed is not None):
                self.write(f"{label}: skipped (runs only on {step.condition})")
                continue
            if step.script is None:
                self.write(f"{label}: {step.standin}")
                continue
            self.write(label)
            files = self._github_files(job, index)
            env = {**self.base, **self.pipeline.env, **job.env, **extra, **step.env, **files}
            if paths:
                env["PATH"] = ":".join([*reversed(paths), env["PATH"]])
            started = time.monotonic()
            code = self.shell.run(
                self._script(job, index, step.script), self._cwd(step), env, _limit(step, job)
            )
            seconds = time.monotonic() - started
            extra.update(_read_env_file(Path(files["GITHUB_ENV"])))
            paths += [p for p in Path(files["GITHUB_PATH"]).read_text().splitlines() if p.strip()]
            self.write(f"   {_verdict(code, step, job)} ({seconds:.1f} s)")
            if code != 0 and failed is None:
                failed = f"step {index} ({step.name}) {_verdict(code, step, job)}"
        return failed

    def _github_files(self, job: Job, index: int) -> dict[str, str]:
        files = {}
        for name in ("GITHUB_ENV", "GITHUB_PATH", "GITHUB_OUTPUT", "GITHUB_STEP_SUMMARY"):
            path = self.scratch / f"{job.id}-{index}-{name.lower()}"
            path.write_text("")
            files[name] = str(path)
        return files

    # GitLab: one shell for the job's script, one for its after_script --------------------

    def _one_shell(self, job: Job) -> str | None:
        env = {**self.base, **self.pipeline.env, **self.carried, **job.env}
        env["CI_JOB_NAME"] = job.id
        code, index, _ = self._marked(job, "script", job.steps, env)
        failed = None
        if code != 0:
            step = job.steps[index] if index < len(job.steps) else job.steps[-1]
            failed = f"`{step.name}` {_verdict(code, step, job)}"
        if job.after:
            self.write(f"-- after_script (job {'failed' if failed else 'succeeded'})")
            status = {"CI_JOB_STATUS": "failed" if failed else "success"}
            after_code, _, _ = self._marked(job, "after", job.after, {**env, **status})
            if after_code != 0:
                self.write("   after_script failed; the job's status stays as it was")
        return failed

    def _marked(
        self, job: Job, kind: str, steps: tuple[Step, ...], env: Mapping[str, str]
    ) -> tuple[int, int, float]:
        """Run `steps` in one shell; (exit code, index of the last started step, seconds)."""
        lines = []
        for index, step in enumerate(steps):
            lines += [f"printf '%s\\n' {shlex.quote(MARKER + str(index))}", step.script or ":"]
        lines.append(f"printf '%s\\n' {shlex.quote(MARKER + 'end')}")
        script = self._script(job, kind, "\n".join(lines))
        current = {"index": -1, "started": time.monotonic()}

        def marker(value: str) -> None:
            now = time.monotonic()
            if current["index"] >= 0:
                self.write(f"   ok ({now - current['started']:.1f} s)")
            if value != "end":
                step = steps[int(value)]
                self.write(f"-- $ {step.name}" + (" ..." if "\n" in (step.script or "") else ""))
            current.update(index=int(value) if value != "end" else len(steps), started=now)

        started = time.monotonic()
        code = self.shell.run(script, self.root, env, job.timeout_seconds, marker)
        if code != 0 and 0 <= current["index"] < len(steps):
            step = steps[int(current["index"])]
            elapsed = time.monotonic() - current["started"]
            self.write(f"   {_verdict(code, step, job)} ({elapsed:.1f} s)")
        return code, int(current["index"]), time.monotonic() - started

    def _carry(self, job: Job) -> None:
        for name in job.dotenv:
            path = self.root / name
            if path.is_file():
                self.carried.update(_read_env_file(path))

    # helpers ------------------------------------------------------------------------------

    def _script(self, job: Job, index: int | str, text: str) -> Path:
        path = self.scratch / f"{job.id}-{index}.sh"
        path.write_text(text + "\n")
        return path

    def _cwd(self, step: Step) -> Path:
        return self.root / step.working_directory if step.working_directory else self.root

    def _summary(self, result: RunResult) -> None:
        self.write("")
        for outcome in result.jobs:
            timing = f"{outcome.seconds:6.1f} s" if outcome.status != SKIPPED else "       -"
            reason = f"  {outcome.reason}" if outcome.reason else ""
            self.write(f"  {outcome.job.id:<12} {outcome.status:<8} {timing}{reason}")
        verdict = "passed" if result.passed else "failed"
        self.write(f"pipeline {verdict} in {result.seconds:.1f} s")


_PROVIDERS = {"github": "GitHub Actions", "gitlab": "GitLab CI"}


def _runs(condition: Condition, failed: bool, waiting: bool) -> bool:
    """Whether a step or job with `condition` runs, given whether something failed before it
    and whether something it waits for did not succeed."""
    if condition == "always":
        return True
    if condition == "failure":
        return failed
    if condition == "never":
        return False
    return not failed and not waiting


def _limit(step: Step, job: Job) -> float | None:
    return step.timeout_seconds or job.timeout_seconds


def _verdict(code: int, step: Step, job: Job) -> str:
    if code == 0:
        return "ok"
    if code == TIMED_OUT:
        return f"timed out after {(_limit(step, job) or 0) / 60:g} min"
    return f"failed: exit {code}"


def _read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, and KEY<<DELIMITER ... DELIMITER blocks ($GITHUB_ENV, dotenv)."""
    found: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            value = []
            for more in lines:
                if more == delimiter:
                    break
                value.append(more)
            found[name.strip()] = "\n".join(value)
        elif "=" in line:
            name, value_text = line.split("=", 1)
            found[name.strip()] = value_text
    return found
