"""The `berth` command, run in process through its real entry point."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from berth.cli import context
from berth.cli.main import main
from berth.config import Settings


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str


Run = Callable[..., Outcome]


@pytest.fixture
def run(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Run]:
    monkeypatch.setenv("COLUMNS", "200")

    def invoke(*args: str) -> Outcome:
        context.settings.cache_clear()
        context.registry.cache_clear()
        monkeypatch.setattr(sys, "argv", ["berth", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    yield invoke
    context.settings.cache_clear()
    context.registry.cache_clear()


def test_init_creates_home(run: Run, settings: Settings) -> None:
    outcome = run("init")
    assert outcome.code == 0
    assert (settings.home / "registry.db").exists()
    assert (settings.home / "secret.key").exists()


def test_register_list_show_alias_delete(run: Run, iris_files: tuple[Path, Path]) -> None:
    model, sample = iris_files
    first = run(
        "models",
        "register",
        "iris",
        str(model),
        "--sample",
        str(sample),
        "--metric",
        "accuracy=0.97",
        "--tag",
        "team=ml",
        "--alias",
        "production",
    )
    assert first.code == 0, first.err
    assert "iris:1" in first.out
    assert run("models", "register", "iris", str(model), "--sample", str(sample)).code == 0
    listing = json.loads(run("models", "list", "--json").out)
    assert listing[0]["versions"] == [1, 2]
    assert listing[0]["aliases"] == {"production": 1}
    shown = json.loads(run("models", "show", "iris@production", "--json").out)
    assert shown["version"] == 1
    assert shown["metrics"] == {"accuracy": 0.97}
    assert shown["tags"] == {"team": "ml"}
    assert "sha256" in run("models", "show", "iris:2").out
    refused = run("models", "delete", "iris:1")
    assert refused.code == 1
    assert "iris@production" in refused.err
    assert run("models", "alias", "iris", "production", "2").code == 0
    assert run("models", "delete", "iris:1").code == 0
    assert json.loads(run("models", "list", "--json").out)[0]["versions"] == [2]
    assert run("models", "delete", "iris").code == 1
    assert run("models", "alias", "iris", "production", "--remove").code == 0
    assert run("models", "delete", "iris", "--yes").code == 0
    assert json.loads(run("models", "list", "--json").out) == []


def test_errors_are_one_line_and_exit_nonzero(run: Run, tmp_path: Path) -> None:
    missing = run("models", "register", "m", str(tmp_path / "nope.joblib"))
    assert missing.code == 1
    assert missing.err.startswith("error:")
    assert "does not exist" in missing.err
    assert len(missing.err.strip().splitlines()) == 1
    unknown = run("models", "show", "ghost")
    assert unknown.code == 1
    assert "not registered" in unknown.err
    bad_metric = run("models", "register", "m", str(tmp_path), "--metric", "accuracy")
    assert bad_metric.code == 1
    assert "KEY=VALUE" in bad_metric.err


def test_keys_create_prints_secret_last_list_revoke(run: Run) -> None:
    created = run("keys", "create", "web", "--scope", "predict:churn", "--expires", "90d")
    assert created.code == 0
    secret = created.out.strip().splitlines()[-1]
    assert secret.startswith("berth_")
    listing = run("keys", "list")
    assert "web" in listing.out
    assert "predict:churn" in listing.out
    assert secret not in listing.out
    assert run("keys", "revoke", "web").code == 0
    assert "revoked" in run("keys", "list").out
    assert run("keys", "create", "bad", "--scope", "root").code == 1
    assert run("keys", "create", "bad", "--expires", "soon").code == 1


def test_predict_in_process(run: Run, churn_files: tuple[Path, Path, Path]) -> None:
    model, sample, signature = churn_files
    assert (
        run(
            "models",
            "register",
            "churn",
            str(model),
            "--sample",
            str(sample),
            "--signature",
            str(signature),
        ).code
        == 0
    )
    row = {"tenure_months": 3, "monthly_charges": 90.0, "plan": "basic", "support_calls": 4}
    one = run("predict", "churn", "--input", json.dumps({"features": row}))
    assert one.code == 0, one.err
    assert json.loads(one.out)["prediction"] in (0, 1)
    many = run("predict", "churn:1", "--input", str(sample))
    assert many.code == 0, many.err
    assert len(json.loads(many.out)["predictions"]) == 200
    bad = run("predict", "churn", "--input", json.dumps({"features": {**row, "plan": 1}}))
    assert bad.code == 1
    assert "features.plan" in bad.err


def test_config_show_redacts_secrets(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_SECRET_KEY", "hunter2-very-secret")
    monkeypatch.setenv("BERTH_DATABASE_URL", "postgresql+psycopg://app:pa55word@db/berth")
    shown = run("config", "show")
    assert shown.code == 0
    assert "hunter2" not in shown.out
    assert "pa55word" not in shown.out
    assert "BERTH_DATABASE_URL" in shown.out


@pytest.mark.parametrize(
    "command",
    [
        ["init"],
        ["serve"],
        ["predict"],
        ["demo"],
        ["config", "show"],
        ["models", "register"],
        ["models", "list"],
        ["models", "show"],
        ["models", "alias"],
        ["models", "delete"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "revoke"],
    ],
)
def test_every_command_has_help_with_an_example(run: Run, command: list[str]) -> None:
    outcome = run(*command, "--help")
    assert outcome.code == 0
    assert "Example" in outcome.out


def test_serve_without_models_explains_what_to_do(run: Run) -> None:
    outcome = run("serve")
    assert outcome.code == 1
    assert "nothing to serve" in outcome.err


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [("BERTH_PORT", "abc", "BERTH_PORT"), ("BERTH_SERVED", "a,b", "JSON")],
)
def test_bad_environment_is_one_clear_error(
    run: Run, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(variable, value)
    outcome = run("models", "list")
    assert outcome.code == 1
    assert outcome.err.startswith("error: configuration is not valid")
    assert fragment in outcome.err
