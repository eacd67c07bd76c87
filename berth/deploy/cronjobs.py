"""One Kubernetes CronJob per enabled schedule of the registry: batch runs and backups.

Each runs the schedule's stored arguments in the server image (`berth batch run ARGS`, or
`berth backup create ARGS --schedule NAME` for a backup, recorded as a job of that schedule), in
the schedule's time zone, with the server's settings and Secret, and never two at once
(concurrencyPolicy Forbid, as `berth scheduler` skips a tick while the previous run is still
going). A run that fails is retried by a new pod: batch jobs resume where they stopped, a backup
takes a new snapshot and copies only the objects its destinations lack.

Cron expressions: Kubernetes reads the five crontab fields like Berth, including Vixie cron's
day-of-month/day-of-week rule, names and steps; Berth's @shortcuts and Sunday written as 7 are
rewritten to forms Kubernetes accepts. Around daylight-saving changes Kubernetes' controller
may place a tick differently from `berth scheduler`.

A password inside a stored argument (a database URL) is not written into the manifest: it is
replaced by a `$(VARIABLE)` that Kubernetes expands from the Secret, whose template gets a
placeholder for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from berth.deploy.kubernetes import pod_spec
from berth.deploy.plan import Plan, dns_label
from berth.deploy.source import BatchSchedule
from berth.jobs.cron import SHORTCUTS, Cron
from berth.jobs.kinds import BACKUP, COMMANDS

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<secret>[^@/\s]+)@")
_QUERY_PASSWORD = re.compile(
    r"(?i)(?P<head>[?&](?:password|passwd|pwd|secret|token)=)(?P<secret>[^&#\s]+)"
)
_CRONJOB_NAME_LIMIT = 52
"""CronJob names longer than 52 characters cannot be created (their Jobs add 11)."""


@dataclass
class ScheduleSecrets:
    """Secrets lifted out of schedule (and stream consumer) arguments: {variable (and Secret
    key): original value}."""

    values: dict[str, str] = field(default_factory=dict)

    def lift(self, schedule: str, args: list[str]) -> tuple[list[str], list[str]]:
        """The arguments with secrets replaced by `$(VARIABLE)`, and the variables used."""
        prefix = "BERTH_SCHEDULE_" + re.sub(r"[^A-Z0-9]+", "_", schedule.upper()).strip("_")
        return self.lift_as(prefix, args)

    def lift_as(self, prefix: str, args: list[str]) -> tuple[list[str], list[str]]:
        """As `lift`, with variables named `<prefix>_SECRET_<n>` (the stream consumer's own)."""
        before = set(self.values)
        lifted = [self._lift_one(prefix, arg) for arg in args]
        return lifted, [v for v in self.values if v not in before]

    def _lift_one(self, prefix: str, arg: str) -> str:
        # Kubernetes expands `$(NAME)` in commands; `$$(` keeps a literal one as it was.
        arg = arg.replace("$(", "$$(")

        def url(found: re.Match[str]) -> str:
            return f"{found['head']}$({self._keep(prefix, found)})@"

        def query(found: re.Match[str]) -> str:
            return f"{found['head']}$({self._keep(prefix, found)})"

        return _QUERY_PASSWORD.sub(query, _URL_PASSWORD.sub(url, arg))

    def _keep(self, prefix: str, found: re.Match[str]) -> str:
        index = sum(1 for v in self.values if v.startswith(f"{prefix}_SECRET_")) + 1
        variable = f"{prefix}_SECRET_{index}"
        self.values[variable] = found["secret"]
        return variable


def kubernetes_schedule(cron: str) -> str:
    """`cron` in the syntax of Kubernetes' CronJob controller (same ticks)."""
    text = SHORTCUTS.get(cron.strip().lower(), cron.strip())
    fields = text.split()
    if len(fields) != 5:
        return text  # Berth refused it when the schedule was saved; let validation say so
    weekday = fields[4].lower()
    if _mentions_seven(weekday):
        parsed = Cron(text)
        fields[4] = ",".join(str(day) for day in sorted(parsed.weekdays))
    return " ".join(fields)


def _mentions_seven(weekday: str) -> bool:
    """Whether 7 (Sunday) appears as a value, which Kubernetes' parser does not accept."""
    for entry in weekday.split(","):
        values = entry.split("/", 1)[0]
        if "7" in values.split("-"):
            return True
    return False


def cronjob_name(plan: Plan, schedule: str) -> str:
    return dns_label(f"{plan.app}-{schedule}", _CRONJOB_NAME_LIMIT)


def cronjob(plan: Plan, info: BatchSchedule, secrets: ScheduleSecrets) -> dict[str, Any]:
    args, lifted = secrets.lift(info.name, list(info.args))
    command = [*COMMANDS[info.kind], *args]
    if info.kind == BACKUP:
        command += ["--schedule", info.name]  # its job is recorded as this schedule's
    container: dict[str, Any] = {
        "name": info.kind,
        "command": command,
        "resources": {
            "requests": {"cpu": "500m", "memory": plan.options.memory},
            "limits": {"cpu": "2", "memory": plan.options.memory},
        },
    }
    if lifted:
        container["env"] = [
            {
                "name": variable,
                "valueFrom": {"secretKeyRef": {"name": plan.secret_name, "key": variable}},
            }
            for variable in lifted
        ]
    spec = pod_spec(plan, container)
    spec["restartPolicy"] = "Never"
    labels = plan.labels(info.kind)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": cronjob_name(plan, info.name), "labels": labels},
        "spec": {
            "schedule": kubernetes_schedule(info.cron),
            "timeZone": info.timezone,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 300,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {
                "metadata": {"labels": labels},
                "spec": {
                    "backoffLimit": 2,
                    "template": {"metadata": {"labels": labels}, "spec": spec},
                },
            },
        },
    }
