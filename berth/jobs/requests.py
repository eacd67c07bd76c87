"""What people ask of batch jobs: the bodies of `POST /api/v1/jobs` and of a schedule, declared
once.

A job is asked for in one of two forms: the arguments of `berth batch run` (`JobArgs`), or one
field per option (`JobFields`). Either form is checked by its model here, and then as the command
checks its arguments; the API documents both from these models.

Refusals keep pydantic's own words after the field's name (`'chunk_size': Input should be ...`):
a job's fields are the command's options, so the name is all that needs translating.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from berth.errors import InvalidInput
from berth.jobs import spec as s
from berth.jobs.spec import BatchSpec
from berth.request_model import RequestModel, Text

MAX_ARGS = 200
"""Far more arguments than `berth batch run` has options; a bound on what is stored."""


def _column_name(value: str) -> str:
    # Features travel as `--features a,b,c`: a comma or blank would split or drop a name.
    if not value or value != value.strip() or "," in value:
        raise ValueError(f"{value!r} is not a column name (empty, commas, or spaces around it)")
    return value


class JobArgs(BaseModel):
    """The job as `berth batch run` arguments."""

    model_config = ConfigDict(extra="forbid", strict=True, title="JobArguments")

    args: list[Text] = Field(
        min_length=1,
        max_length=MAX_ARGS,
        description="The arguments of `berth batch run`, e.g. "
        '["churn@production", "--source", "/data/customers.csv", "--sink", "/data/scores"]. '
        "`--job` is the server's to set.",
    )


class JobFields(BaseModel):
    """The job as one field per `berth batch run` option."""

    model_config = ConfigDict(extra="forbid", strict=True, title="JobOptions")

    model: Text = Field(
        min_length=1, max_length=256, description="The version: NAME, NAME:N or NAME@ALIAS."
    )
    source: Text = Field(
        min_length=1,
        description="A .csv/.parquet/.jsonl file, or a SQLAlchemy URL (with query or table).",
    )
    sink: Text = Field(
        min_length=1,
        description="A .csv/.parquet/.jsonl path (a folder of parts), or a SQLAlchemy URL.",
    )
    query: Text | None = Field(None, description="SQL source: the SELECT to score.")
    table: Text | None = Field(None, description="SQL source: the table to score.")
    sink_table: Text | None = Field(
        None, description="SQL sink: the table results go to (created when missing)."
    )
    id_column: Text = Field(
        "id", min_length=1, description="Unique row key: pages SQL sources, keys upserts, skips."
    )
    mode: Literal["append", "upsert"] = Field(
        "append", description="append (keep rows already in the sink) or upsert (replace them)."
    )
    features: list[Annotated[Text, AfterValidator(_column_name)]] | None = Field(
        None, min_length=1, description="Input columns; default the signature's."
    )
    chunk_size: int = Field(
        s.DEFAULT_CHUNK_ROWS,
        ge=1,
        le=s.MAX_CHUNK_ROWS,
        description="Rows read, scored and committed at a time.",
    )
    workers: int = Field(1, ge=1, le=s.MAX_WORKERS, description="Processes scoring chunks.")
    skip_scored: bool = Field(False, description="Score only rows the sink holds no result for.")
    errors: Text | None = Field(
        None, description="Where rejected rows go, with the reason (file or SQLAlchemy URL)."
    )
    errors_table: Text | None = Field(
        None, description="SQL errors sink: the table (default <sink_table>_errors)."
    )
    max_error_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Fail when more than this share of rows is rejected (0..1).",
    )

    def spec(self) -> BatchSpec:
        return BatchSpec(
            model=self.model,
            source=self.source,
            sink=self.sink,
            query=self.query,
            table=self.table,
            sink_table=self.sink_table,
            id_column=self.id_column,
            mode=self.mode,
            features=tuple(self.features) if self.features else None,
            chunk_size=self.chunk_size,
            workers=self.workers,
            skip_scored=self.skip_scored,
            errors=self.errors,
            errors_table=self.errors_table,
            max_error_rate=self.max_error_rate,
        )


FIELDS_EXAMPLE: dict[str, Any] = {
    "model": "churn@production",
    "source": "/data/customers.parquet",
    "sink": "/data/scores.parquet",
    "id_column": "customer_id",
}
ARGS_EXAMPLE: dict[str, Any] = {"args": ["churn@production", "--source",
                                         "/data/customers.parquet", "--sink",
                                         "/data/scores.parquet", "--id-column", "customer_id"]}  # fmt: skip
FIELD_NAMES = ", ".join(JobFields.model_fields)

M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], body: dict[str, Any], example: Any) -> M:
    """`body` as a `JobArgs` or `JobFields`; `InvalidInput` naming the first wrong field."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            problem = f"unknown field '{where}'; known fields: args, or {FIELD_NAMES}"
        elif first["type"] == "missing":
            problem = f"the request body has no '{where}' field"
        else:
            problem = f"'{where}': {first['msg'].removeprefix('Value error, ')}"
        raise InvalidInput(f"{problem}; send e.g. {example}") from None


class ScheduleRequest(RequestModel):
    """Run `berth batch run ARGS` (or, with kind `backup`, `berth backup create ARGS`) on a cron
    schedule: the body of PUT /api/v1/schedules/{name} and what `berth batch schedule` and
    `berth backup schedule` send. The cron expression, the time zone and the arguments are
    then checked as the scheduler will read them."""

    EXAMPLE: ClassVar[dict[str, Any]] = {
        "cron": "0 2 * * *",
        "timezone": "Europe/Berlin",
        "args": ARGS_EXAMPLE["args"],
    }

    cron: Text = Field(
        max_length=256, description="Five cron fields, or @hourly, @daily, ... e.g. '0 2 * * *'."
    )
    timezone: Text = Field(
        "UTC", max_length=64, description="The IANA time zone the cron fields are read in."
    )
    args: list[Text] = Field(
        max_length=MAX_ARGS,
        description="The arguments of `berth batch run` (kind batch) or of `berth backup "
        "create` (kind backup); `--job` is the scheduler's to set.",
    )
    enabled: bool = Field(True, description="false: stored paused.")
    kind: Literal["batch", "backup"] = Field(
        "batch", description="What each tick runs: a batch job (default) or a backup."
    )
