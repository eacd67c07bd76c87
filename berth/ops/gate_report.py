"""What the validation gates found: one check per gate, and the report a CI job reads."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.table import Table


@dataclass(frozen=True)
class GateCheck:
    name: str
    """accuracy, auc, rmse, mae, latency_p99_ms, no_nan, output_range or no_regression.METRIC."""
    passed: bool
    value: float | None
    """What was measured (the candidate's metric for no_regression.*); None if nothing was."""
    threshold: str
    """What the value had to be, e.g. '>= 0.8' or '[0, 1]'."""
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        # JSON has no NaN or infinity; the detail says what the value was.
        if value is not None and not math.isfinite(value):
            value = None
        return {
            "name": self.name,
            "passed": self.passed,
            "value": value,
            "threshold": self.threshold,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> GateCheck:
        value = document["value"]
        return cls(
            name=str(document["name"]),
            passed=bool(document["passed"]),
            value=None if value is None else float(value),
            threshold=str(document["threshold"]),
            detail=str(document.get("detail", "")),
        )


@dataclass(frozen=True)
class GateReport:
    reference: str
    """The version checked, as NAME:VERSION (an alias is resolved when the gates run)."""
    rows: int
    """Rows of the data file the gates ran on."""
    checks: tuple[GateCheck, ...]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def failures(self) -> list[GateCheck]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "rows": self.rows,
            "passed": self.passed,
            "checks": [check.to_dict() for check in self.checks],
        }

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> GateReport:
        """The inverse of `to_dict` (the answer of `POST /api/v1/validate`): a remote command
        prints the report from it as a local one does from `to_dict()`."""
        return cls(
            reference=str(document["reference"]),
            rows=int(document["rows"]),
            checks=tuple(GateCheck.from_dict(check) for check in document["checks"]),
        )


def report_table(report: GateReport, title: str | None = None) -> Table:
    """The report as a rich table: check, value, threshold, result, detail."""
    from rich.table import Table  # for terminals: servers that only gate models never draw it

    table = Table(
        "check",
        "value",
        "threshold",
        "result",
        "detail",
        title=title or f"{report.reference} on {report.rows} rows",
    )
    for check in report.checks:
        table.add_row(
            check.name,
            format_value(check.value),
            check.threshold,
            "[green]PASS[/]" if check.passed else "[bold red]FAIL[/]",
            check.detail,
        )
    return table


def format_value(value: float | None) -> str:
    if value is None:
        return "-"
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
