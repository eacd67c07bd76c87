"""The `berth` command, run in process through its real entry point."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from berth.config import Settings
from berth.registry.service import Registry
from berth.store.audit import AuditLog
from tests.cli_modes import Mode, wait_served
from tests.conftest import Run
from tests.local_twin import local_twin
from tests.test_cli_errors import leaf_commands


def test_init_creates_home(run: Run, settings: Settings) -> None:
    outcome = run("init")
    assert outcome.code == 0
    assert (settings.home / "registry.db").exists()
    assert (settings.home / "secret.key").exists()


def test_register_list_show_alias_delete(
    run_both: Run, cli_mode: Mode, settings: Settings, iris_files: tuple[Path, Path]
) -> None:
    run = run_both
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
        "--trust-pickle",
    )
    assert first.code == 0, first.err
    assert "iris:1" in first.out
    assert (
        run(
            "models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle"
        ).code
        == 0
    )
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
    assert run("models", "delete", "iris").code == 1  # no --yes
    aliased = run("models", "delete", "iris", "--yes")
    assert aliased.code == 1
    assert "iris@production" in aliased.err
    assert run("models", "alias", "iris", "production", "--remove").code == 0
    assert run("models", "delete", "iris", "--yes").code == 0
    assert json.loads(run("models", "list", "--json").out) == []
    # Every change was audited as the local user (the remote key), refusals included.
    registry = Registry.from_settings(settings)
    events = [e for e in reversed(AuditLog(registry.db).list()) if e.action != "key.create"]
    registry.db.dispose()
    actions = [(e.action, e.target, e.outcome) for e in events]
    assert actions == [
        ("model.register", "iris:1", "ok"),
        ("model.accelerate", "iris:1", "ok"),  # its ONNX twin, made as it was registered
        ("model.register", "iris:2", "ok"),
        ("model.accelerate", "iris:2", "ok"),
        ("version.delete", "iris:1", "refused"),
        ("alias.set", "iris@production", "ok"),
        ("version.delete", "iris:1", "ok"),
        ("model.delete", "iris", "refused"),  # without --yes it never reached the registry
        ("alias.remove", "iris@production", "ok"),
        ("model.delete", "iris", "ok"),
    ]
    assert {e.actor for e in events} == {cli_mode.actor}


def test_errors_are_one_line_and_exit_nonzero(run_both: Run, tmp_path: Path) -> None:
    run = run_both
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


def test_predict(run_both: Run, cli_mode: Mode, churn_files: tuple[Path, Path, Path]) -> None:
    """In process locally; through the server's v1 prediction routes in remote mode (which
    serve the model once it has a production alias)."""
    run = run_both
    model, sample, signature = churn_files
    registered = run(
        "models",
        "register",
        "churn",
        str(model),
        "--sample",
        str(sample),
        "--signature",
        str(signature),
        "--alias",
        "production",
    )
    assert registered.code == 0, registered.err
    wait_served(cli_mode, "churn")
    row = {"tenure_months": 3, "monthly_charges": 90.0, "plan": "basic", "support_calls": 4}
    one = run("predict", "churn", "--input", json.dumps({"features": row}))
    assert one.code == 0, one.err
    single = json.loads(one.out)
    assert single["prediction"] in (0, 1)
    assert list(single) == [
        *("prediction", "probability", "probabilities", "classes"),
        *("model", "model_version", "prediction_id"),
    ]
    assert (single["model"], single["model_version"], single["classes"]) == ("churn", 1, [0, 1])
    many = run("predict", "churn:1", "--input", str(sample))
    assert many.code == 0, many.err
    assert len(json.loads(many.out)["predictions"]) == 200
    aliased = run("predict", "churn@production", "--input", json.dumps([row, row]))
    assert aliased.code == 0, aliased.err
    assert len(json.loads(aliased.out)["prediction_ids"]) == 2
    bad = run("predict", "churn", "--input", json.dumps({"features": {**row, "plan": 1}}))
    assert bad.code == 1
    assert "features.plan" in bad.err
    assert bad.err.count("\n") == 1
    missing = run("predict", "churn:7", "--input", json.dumps({"features": row}))
    assert missing.code == 1
    assert missing.err == "error: model 'churn' has no version 7 (versions: 1)\n"


def _without_ids(text: str) -> str:
    """Printed v1 documents with their prediction ids (new for every prediction) blanked."""
    return re.sub(r'"[0-9a-f]{32}(-[0-9]+)?"', '"ID"', text)


@pytest.mark.parametrize("cli_mode", ["remote"], indirect=True)
def test_remote_predict_prints_what_local_mode_prints(
    run_both: Run,
    cli_mode: Mode,
    settings: Settings,
    churn_files: tuple[Path, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Character for character (prediction ids aside), errors included; the key needs the
    predict scope, or predict:MODEL."""
    from berth.security.config import KeyConfig
    from berth.security.keys import KeyService, server_secret

    run = run_both
    model, sample, signature = churn_files
    register = ("models", "register", "churn", str(model), "--sample", str(sample))
    assert run(*register, "--signature", str(signature), "--alias", "production").code == 0
    wait_served(cli_mode, "churn")
    row = {"tenure_months": 3, "monthly_charges": 90.0, "plan": "basic", "support_calls": 4}
    for reference, given, refused in (
        ("churn", json.dumps({"features": row}), ""),
        ("churn@production", str(sample), ""),
        ("churn:1", json.dumps({"instances": [row, {**row, "plan": "pro"}]}), ""),
        (
            "churn",
            json.dumps({"features": {**row, "plan": 1}}),
            "features.plan: row 0 expected strings",
        ),
        ("churn:7", json.dumps(row), "model 'churn' has no version 7"),
        ("churn@staging", json.dumps(row), "model 'churn' has no alias 'staging'"),
        ("a/b", json.dumps(row), "'a/b' is not a model reference"),
        ("churn", "{not json", "--input is not valid JSON"),
        ("churn", '{"features": 5}', "features: expected a list or an object"),
        ("churn", '{"instances": 5}', "instances: expected a list of rows, got a number"),
    ):
        remote = run("predict", reference, "--input", given)
        local = local_twin(run, monkeypatch, None, "predict", reference, "--input", given)
        assert (remote.code, remote.err) == (local.code, local.err), reference
        assert _without_ids(remote.out) == _without_ids(local.out), reference
        if refused:
            assert remote.code == 1
            assert remote.err.startswith(f"error: {refused}"), remote.err
        else:
            assert remote.code == 0, remote.err
            assert remote.out != local.out  # each mode predicted: the ids differ
    # The one difference: remote mode predicts with what the server serves (locally, any
    # registered version loads); both modes fail alike, each saying what to do.
    unserved = run("predict", "ghost", "--input", json.dumps(row))
    assert unserved.code == 1
    assert unserved.err.startswith("error: model 'ghost' is not served here (served: churn)")
    registry = Registry.from_settings(settings)
    keys = KeyService(registry.db, server_secret(KeyConfig.from_settings(settings)))
    narrow = keys.create("churn-only", scopes=("predict:churn",))[1]
    reader = keys.create("reader", scopes=("read",))[1]
    registry.db.dispose()
    monkeypatch.setenv("BERTH_API_KEY", narrow)
    assert run("predict", "churn", "--input", json.dumps(row)).code == 0
    monkeypatch.setenv("BERTH_API_KEY", reader)
    refused = run("predict", "churn", "--input", json.dumps(row))
    assert refused.code == 1
    assert refused.err == (
        f"error: {cli_mode.url} refused: key 'reader' may not predict with model 'churn'; "
        "create a key with --scope predict or --scope predict:churn\n"
    )


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
        ["bench"],
        ["config", "show"],
        ["models", "register"],
        ["models", "list"],
        ["models", "show"],
        ["models", "alias"],
        ["models", "delete"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "revoke"],
        *(
            ["endpoints", command]
            for command in ("create", "list", "show", "history", "delete", "routes", "shadow")
        ),
        *(
            ["rollout", command]
            for command in (
                *("start", "status", "list", "pause", "resume", "promote"),
                *("finalize", "rollback", "abort", "wait"),
            )
        ),
        *(["experiments", command] for command in ("start", "report", "conclude", "list")),
        *(["batch", c] for c in ("run", "schedule", "schedules", "unschedule", "runs")),
        ["scheduler"],
        ["stream", "run"],
        *(["jobs", command] for command in ("list", "show", "cancel")),
        ["export"],
        ["build"],
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


def test_pickle_needs_trust_pickle(
    run_both: Run, cli_mode: Mode, iris_files: tuple[Path, Path]
) -> None:
    run = run_both
    model, sample = iris_files
    refused = run("models", "register", "iris", str(model), "--sample", str(sample))
    assert refused.code == 1
    assert len(refused.err.strip().splitlines()) == 1
    assert "model.joblib is a pickle" in refused.err
    assert "skops.io.dump" in refused.err
    assert "--trust-pickle" in refused.err
    trusted = run(
        "models", "register", "iris", str(model), "--sample", str(sample), "--trust-pickle"
    )
    assert trusted.code == 0, trusted.err
    shown = run("models", "show", "iris:1")
    assert "trusts" in shown.out
    assert "pickle" in shown.out
    assert json.loads(run("models", "show", "iris", "--json").out)["pickle_trusted"] is True
    # The trusted pickle loads (in a server in remote mode, which serves it once aliased).
    assert run("models", "alias", "iris", "production", "1").code == 0
    wait_served(cli_mode, "iris")
    predicted = run("predict", "iris", "--input", "[5.1, 3.5, 1.4, 0.2]")
    assert predicted.code == 0, predicted.err
    assert json.loads(predicted.out)["prediction"] == 0


def test_trust_type_and_archives(run_both: Run, cli_mode: Mode, tmp_path: Path) -> None:
    run = run_both
    import tarfile

    import numpy as np
    import skops.io as sio
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    features, target = load_iris(return_X_y=True)
    folder = tmp_path / "iris"
    folder.mkdir()
    # numpy.sum is a plain function, not on the allow-list.
    model = make_pipeline(FunctionTransformer(np.sum, kw_args={"axis": 1, "keepdims": True}))
    model.steps.append(("clf", LogisticRegression(max_iter=1000)))
    sio.dump(model.fit(features, target), folder / "model.skops")
    np.save(tmp_path / "sample.npy", features[:10])
    with tarfile.open(tmp_path / "iris.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="iris")
    command = ["models", "register", "iris", str(tmp_path / "iris.tar.gz")]
    command += ["--sample", str(tmp_path / "sample.npy")]

    refused = run(*command)
    assert refused.code == 1
    assert "numpy.sum" in refused.err
    assert "--trust-type numpy.sum" in refused.err
    trusted = run(*command, "--trust-type", "numpy.sum")
    assert trusted.code == 0, trusted.err
    shown = json.loads(run("models", "show", "iris", "--json").out)
    assert shown["trusted_types"] == ["numpy.sum"]
    assert "numpy.sum" in run("models", "show", "iris").out
    # The skops file loads with the version's own trusted type (in remote mode, on the server).
    assert run("models", "alias", "iris", "production", "1").code == 0
    wait_served(cli_mode, "iris")
    predicted = run("predict", "iris", "--input", "[5.1, 3.5, 1.4, 0.2]")
    assert predicted.code == 0, predicted.err


def test_bad_names_are_refused(run_both: Run) -> None:
    run = run_both
    for args in (
        ["models", "alias", "../x", "production", "1"],
        ["models", "alias", "iris", "a;DROP TABLE", "1"],
        ["models", "alias", "a/b", "production", "--remove"],
        ["models", "delete", "../x:1"],
        ["models", "show", "a;DROP TABLE"],
    ):
        outcome = run(*args)
        assert outcome.code == 1, args
        assert "not valid" in outcome.err or "not a model reference" in outcome.err, args


def test_empty_registry_listing_says_how_to_register(run_both: Run) -> None:
    run = run_both
    listed = run("models", "list")
    assert listed.code == 0
    assert "No models registered yet" in listed.out
    assert "berth models register NAME" in listed.out
    assert json.loads(run("models", "list", "--json").out) == []  # JSON stays plain


def test_register_says_what_it_inferred_and_what_it_already_had(
    run_both: Run, churn_files: tuple[Path, Path, Path]
) -> None:
    run = run_both
    model = churn_files[0]
    first = run("models", "register", "churn", str(model))
    assert first.code == 0, first.err
    assert "Registered churn:1" in first.out
    assert "the model declares its inputs (4 columns: tenure_months float64" in first.out
    again = run("models", "register", "churn", str(model))
    assert again.code == 0, again.err
    assert "Registered churn:2" in again.out
    sha256 = json.loads(run("models", "show", "churn:1", "--json").out)["sha256"]
    assert f"same artifact as churn:1 (sha256 {sha256[:12]})" in again.out


def test_predict_reads_a_csv_without_header_row(
    run_both: Run, cli_mode: Mode, tmp_path: Path
) -> None:
    run = run_both
    import pandas as pd
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    frame = pd.DataFrame({"a": [1.5, 2.5, 0.5, 3.5], "b": [0.0, 1.0, 1.0, 0.0]})
    sio.dump(LogisticRegression().fit(frame, [0, 1, 0, 1]), tmp_path / "m.skops")
    rows = tmp_path / "rows.csv"
    rows.write_text("1.5,0\n2.5,1\n0.5,1\n")
    registered = run(
        "models", "register", "m", str(tmp_path / "m.skops"), "--sample", str(rows),
        "--alias", "production",
    )  # fmt: skip
    assert registered.code == 0, registered.err
    assert "rows.csv has no header row" in registered.out
    wait_served(cli_mode, "m")
    predicted = run("predict", "m", "--input", str(rows))
    assert predicted.code == 0, predicted.err
    assert len(json.loads(predicted.out)["predictions"]) == 3


def test_a_model_raising_during_register_is_one_line(run_both: Run, tmp_path: Path) -> None:
    run = run_both
    (tmp_path / "model.py").write_text(
        "class Broken:\n"
        "    def load(self):\n"
        "        pass\n"
        "    def predict(self, rows):\n"
        "        raise RuntimeError('the model is broken')\n"
    )
    (tmp_path / "rows.csv").write_text("a,b\n1,2\n")
    outcome = run(
        "models",
        "register",
        "m",
        str(tmp_path / "model.py"),
        "--sample",
        str(tmp_path / "rows.csv"),
    )
    assert outcome.code == 1
    assert len(outcome.err.strip().splitlines()) == 1
    assert "RuntimeError: the model is broken" in outcome.err
    assert "this is a bug" not in outcome.err


def test_flags_show_as_flags_in_help(run: Run) -> None:
    commands = [path for path, _ in leaf_commands()]
    assert len(commands) > 40
    for command in [[], *commands]:
        shown = run(*command, "--help").out
        assert "<bool>" not in shown, command
    assert "--json  " in run("models", "list", "--help").out
    assert "--serve / --no-serve" in run("demo", "--help").out
