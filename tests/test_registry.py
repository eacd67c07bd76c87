"""The registry service on SQLite and PostgreSQL: register, resolve, aliases, deletes, schema."""

from __future__ import annotations

import json
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from berth.errors import Conflict, InvalidInput, ModelLoadError, NotFound
from berth.registration.service import RegisterRequest, register
from berth.registry import service
from berth.registry.artifacts import file_sha256
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes import load_runtime
from berth.runtimes.loading import artifact_path, load_version
from berth.store.audit import AuditLog, cli_actor
from berth.store.db import MIGRATIONS, Database
from berth.store.tables import AuditRow, Base
from tests.conftest import register_churn, register_iris

IrisFiles = tuple[Path, Path]
ChurnFiles = tuple[Path, Path, Path]


def _names(signature: dict[str, object], key: str) -> list[str]:
    items = signature[key]
    assert isinstance(items, list)
    return [item["name"] for item in items]


# registration -------------------------------------------------------------------------------


def test_register_numbers_versions_from_one(registry: Registry, iris_files: IrisFiles) -> None:
    numbers = [register_iris(registry, iris_files).number for _ in range(3)]
    assert numbers == [1, 2, 3]
    assert [v.number for v in registry.get_model("iris").versions] == [1, 2, 3]
    # Numbering is per model: another model starts at 1 again.
    model, sample = iris_files
    other = register(
        registry, RegisterRequest(name="iris-b", path=model, sample=sample, trust_pickle=True)
    )
    assert other.number == 1
    assert other.ref == "iris-b:1"


def test_register_infers_tensor_signature_from_npy(
    registry: Registry, iris_files: IrisFiles
) -> None:
    version = register_iris(registry, iris_files)
    assert version.flavor == "sklearn"
    signature = version.signature
    assert signature.kind == "tensor"
    assert [(t.name, t.dtype, t.shape) for t in signature.inputs] == [("input", "float32", (-1, 4))]
    outputs = {t.name: t for t in signature.outputs}
    assert list(outputs) == ["predict", "predict_proba"]
    assert outputs["predict"].shape == (-1,)
    assert outputs["predict"].dtype == "int64"
    assert outputs["predict_proba"].dtype == "float32"  # fitted on float32 inputs
    assert outputs["predict_proba"].shape == (-1, 3)
    # The stored copy reads back the same.
    assert registry.get_version("iris", 1).signature == signature


def test_register_infers_tabular_signature_from_csv(
    registry: Registry, churn_files: ChurnFiles
) -> None:
    model, sample, _signature = churn_files
    version = register(registry, RegisterRequest(name="churn", path=model, sample=sample))
    signature = version.signature
    assert version.flavor == "sklearn"
    assert signature.kind == "tabular"
    columns = {c.name: c.dtype for c in signature.columns}
    assert columns == {
        "tenure_months": "int64",
        "monthly_charges": "float64",
        "plan": "string",
        "support_calls": "int64",
    }
    # Inferred columns carry no ranges; only a signature file adds them.
    assert all(c.minimum is None and c.maximum is None for c in signature.columns)
    assert [o.name for o in signature.outputs] == ["predict", "predict_proba"]


def test_signature_file_wins_over_sample(registry: Registry, churn_files: ChurnFiles) -> None:
    version = register_churn(registry, churn_files, aliases=())
    columns = {c.name: c for c in version.signature.columns}
    assert columns["tenure_months"].minimum == 0
    assert columns["tenure_months"].maximum == 600
    assert columns["monthly_charges"].minimum == 0
    # The file has no outputs: the registry adds them by predicting on the sample.
    assert [o.name for o in version.signature.outputs] == ["predict", "predict_proba"]


def test_signature_file_of_another_kind_wins(
    registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    signature = tmp_path / "signature.json"
    signature.write_text(
        json.dumps({"inputs": [{"name": "features", "dtype": "float32", "shape": [-1, 4]}]})
    )
    version = register_iris(registry, iris_files, signature=signature)
    assert [t.name for t in version.signature.inputs] == ["features"]


def test_register_stores_metrics_tags_description(
    registry: Registry, iris_files: IrisFiles
) -> None:
    version = register_iris(
        registry,
        iris_files,
        metrics={"accuracy": 0.97, "f1": 0.5},
        tags={"team": "ml", "data": "iris-2024"},
        description="first try",
    )
    stored = registry.get_version("iris", version.number)
    assert stored.metrics == {"accuracy": 0.97, "f1": 0.5}
    assert stored.tags == {"team": "ml", "data": "iris-2024"}
    assert stored.description == "first try"
    assert registry.get_model("iris").description == "first try"


def test_register_stores_example_rows(
    registry: Registry, iris_files: IrisFiles, churn_files: ChurnFiles
) -> None:
    iris = register_iris(registry, iris_files)
    expected = np.load(iris_files[1])[:3]
    assert iris.example is not None
    assert np.allclose(np.asarray(iris.example), expected)
    assert registry.get_version("iris", 1).example == iris.example

    churn = register_churn(registry, churn_files)
    frame = pd.read_csv(churn_files[1])
    assert churn.example is not None
    assert len(churn.example) == 3
    assert churn.example[0] == {
        "tenure_months": int(frame["tenure_months"][0]),
        "monthly_charges": float(frame["monthly_charges"][0]),
        "plan": frame["plan"][0],
        "support_calls": int(frame["support_calls"][0]),
    }
    assert registry.resolve("churn").example == churn.example


def test_register_without_sample_refuses_only_when_nothing_tells(
    registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "model.py").write_text(textwrap.dedent(ECHO_MODEL))
    with pytest.raises(InvalidInput, match="--sample"):
        register(registry, RegisterRequest(name="echo", path=tmp_path / "model.py"))
    # Nothing was recorded.
    with pytest.raises(NotFound):
        registry.get_model("echo")


ECHO_MODEL = """
class Echo:
    def load(self):
        pass

    def predict(self, rows):
        return [0] * len(rows)
"""


def test_register_without_sample_takes_the_estimators_inputs(
    registry: Registry, iris_files: IrisFiles, churn_files: ChurnFiles
) -> None:
    # Fitted on an array: it knows its width.
    iris = register(registry, RegisterRequest(name="iris", path=iris_files[0], trust_pickle=True))
    assert iris.signature.inputs[0].shape == (-1, 4)
    assert [o.name for o in iris.signature.outputs] == ["predict", "predict_proba"]
    assert iris.example is None
    assert any("declares its inputs" in note for note in iris.notes)
    # Fitted on a DataFrame: it knows its columns, and its encoder knows which hold text.
    churn = register(registry, RegisterRequest(name="churn", path=churn_files[0]))
    columns = {c.name: c.dtype for c in churn.signature.columns}
    assert columns == {
        "tenure_months": "float64",
        "monthly_charges": "float64",
        "plan": "string",
        "support_calls": "float64",
    }
    assert registry.resolve("churn:1").signature == churn.signature
    assert registry.resolve("churn:1").notes == ()  # a note is news of the registration only


def test_register_same_bytes_again_names_the_version_that_has_them(
    registry: Registry, iris_files: IrisFiles
) -> None:
    first = register_iris(registry, iris_files)
    assert first.notes == ()
    second = register_iris(registry, iris_files)
    assert second.number == 2  # a new version all the same: its metadata may differ
    assert second.notes == (f"same artifact as iris:1 (sha256 {first.artifact.sha256[:12]})",)
    other = register(
        registry,
        RegisterRequest(
            name="flowers", path=iris_files[0], sample=iris_files[1], trust_pickle=True
        ),
    )
    assert other.notes == (
        f"same artifact as iris:1, iris:2 (sha256 {first.artifact.sha256[:12]})",
    )


def test_headerless_sample_csv_keeps_its_first_row(registry: Registry, tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    rows = np.asarray([[1.5, 0.0], [2.5, 1.0], [0.5, 1.0], [3.5, 0.0]])
    frame = pd.DataFrame(rows, columns=["a", "b"])
    sio.dump(LogisticRegression().fit(frame, [0, 1, 0, 1]), tmp_path / "named.skops")
    sio.dump(LogisticRegression().fit(rows, [0, 1, 0, 1]), tmp_path / "plain.skops")
    sample = tmp_path / "rows.csv"
    sample.write_text("1.5,0\n2.5,1\n")

    # The model knows its column names: the rows get them.
    named = register(
        registry, RegisterRequest(name="named", path=tmp_path / "named.skops", sample=sample)
    )
    assert named.signature.input_names == ["a", "b"]
    assert named.example == [{"a": 1.5, "b": 0}, {"a": 2.5, "b": 1}]
    assert any("rows.csv has no header row" in note for note in named.notes)
    # It does not: the columns are positional, and no row is lost either.
    plain = register(
        registry, RegisterRequest(name="plain", path=tmp_path / "plain.skops", sample=sample)
    )
    assert plain.signature.input_names == ["0", "1"]
    assert plain.example == [{"0": 1.5, "1": 0}, {"0": 2.5, "1": 1}]
    # A width the model does not take is refused, with what to do.
    sample.write_text("1.5,0,7\n2.5,1,7\n")
    with pytest.raises(
        InvalidInput, match=r"no header row.*add a first line with the column names"
    ):
        register(
            registry, RegisterRequest(name="named", path=tmp_path / "named.skops", sample=sample)
        )


def test_python_model_that_raises_on_the_sample_is_one_clear_error(
    registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    (tmp_path / "model.py").write_text(
        textwrap.dedent(ECHO_MODEL).replace("return [0] * len(rows)", "raise KeyError('species')")
    )
    with pytest.raises(
        ModelLoadError, match=r"the model failed on the rows of .*sample.npy \(KeyError"
    ):
        register(
            registry, RegisterRequest(name="echo", path=tmp_path / "model.py", sample=iris_files[1])
        )


def test_errors_name_the_users_file_not_berths_private_copy(
    registry: Registry, tmp_path: Path
) -> None:
    (tmp_path / "model.py").write_text("import not_installed_anywhere\n")
    with pytest.raises(ModelLoadError) as raised:
        register(registry, RegisterRequest(name="echo", path=tmp_path / "model.py"))
    assert str(tmp_path / "model.py") in raised.value.message
    assert "berth-register-" not in raised.value.message
    assert str(tmp_path / "model.py") in str(raised.value)
    junk = tmp_path / "folder"
    junk.mkdir()
    (junk / "model.skops").write_bytes(b"not a zip file")
    with pytest.raises(ModelLoadError) as raised:
        register(registry, RegisterRequest(name="junk", path=junk))
    assert str(junk / "model.skops") in raised.value.message
    assert "berth-register-" not in raised.value.message


def test_register_rejects_missing_path_and_bad_names(
    registry: Registry, iris_files: IrisFiles, tmp_path: Path
) -> None:
    with pytest.raises(InvalidInput, match="does not exist"):
        register(registry, RegisterRequest(name="iris", path=tmp_path / "nope.joblib"))
    with pytest.raises(InvalidInput, match="model name"):
        register(registry, RegisterRequest(name="bad name", path=iris_files[0]))
    with pytest.raises(InvalidInput, match="alias name"):
        register_iris(registry, iris_files, aliases=("no spaces",))


# aliases and references -----------------------------------------------------------------------


def test_aliases_at_register_and_moved_atomically(
    registry: Registry, iris_files: IrisFiles
) -> None:
    v1 = register_iris(registry, iris_files, aliases=("production", "staging"))
    assert v1.aliases == ("production", "staging")
    v2 = register_iris(registry, iris_files, aliases=("staging",))
    assert v2.aliases == ("staging",)
    assert registry.get_version("iris", 1).aliases == ("production",)
    assert registry.get_model("iris").aliases == {"production": 1, "staging": 2}

    assert registry.resolve("iris@production").number == 1
    moved = registry.set_alias("iris", "production", 2)
    assert moved.number == 2
    assert moved.aliases == ("production", "staging")
    assert registry.resolve("iris@production").number == 2
    assert registry.get_version("iris", 1).aliases == ()
    # One row per alias: moving does not duplicate it.
    assert registry.get_model("iris").aliases == {"production": 2, "staging": 2}

    new = registry.set_alias("iris", "canary", 1)
    assert new.aliases == ("canary",)
    assert registry.resolve("iris@canary").number == 1
    assert registry.models_with_alias("canary") == ["iris"]

    registry.remove_alias("iris", "canary")
    with pytest.raises(NotFound, match="no alias 'canary'"):
        registry.resolve("iris@canary")
    with pytest.raises(NotFound, match="no alias 'canary'"):
        registry.remove_alias("iris", "canary")
    assert registry.models_with_alias("canary") == []


def test_set_alias_checks_its_arguments(registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(registry, iris_files, aliases=("production",))
    with pytest.raises(NotFound, match="no version 7"):
        registry.set_alias("iris", "production", 7)
    with pytest.raises(NotFound, match="not registered"):
        registry.set_alias("nope", "production", 1)
    with pytest.raises(InvalidInput, match="alias name"):
        registry.set_alias("iris", "bad alias", 1)
    # A failed move leaves the alias where it was.
    assert registry.resolve("iris@production").number == 1


def test_alias_moves_are_seen_whole_by_readers(registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files)
    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(registry.resolve("iris@production").number)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for number in (2, 1, 2, 1, 2):
            registry.set_alias("iris", "production", number)
    finally:
        stop.set()
        reader.join()
    assert set(seen) <= {1, 2}
    assert registry.resolve("iris@production").number == 2


def test_resolve_references(registry: Registry, iris_files: IrisFiles) -> None:
    for _ in range(3):
        register_iris(registry, iris_files)
    # No production alias: the bare name is the latest version.
    assert registry.resolve("iris").number == 3
    assert registry.resolve("iris:2").number == 2
    registry.set_alias("iris", "production", 1)
    registry.set_alias("iris", "staging", 2)
    # With one: the bare name follows it.
    assert registry.resolve("iris").number == 1
    assert registry.resolve("iris@staging").number == 2
    assert registry.resolve("iris:3").number == 3
    assert registry.resolve(" iris:3 ").number == 3


def test_resolve_unknown_references_explain(registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(registry, iris_files, aliases=("production",))
    with pytest.raises(NotFound, match=r"model 'nope' is not registered; see `berth models list`"):
        registry.resolve("nope")
    with pytest.raises(NotFound, match=r"no version 9 \(versions: 1\)"):
        registry.resolve("iris:9")
    with pytest.raises(NotFound) as caught:
        registry.resolve("iris@shadow")
    message = caught.value.message
    assert "no alias 'shadow'" in message
    assert "aliases: production" in message
    assert "berth models alias iris shadow VERSION" in message
    with pytest.raises(InvalidInput, match="not a model reference"):
        registry.resolve("iris:latest")


# deletes ------------------------------------------------------------------------------------


def test_delete_version_refused_while_aliased(registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files)
    with pytest.raises(Conflict) as caught:
        registry.delete_version("iris", 1)
    assert "iris@production" in caught.value.message
    assert "berth models alias iris production" in caught.value.message
    assert [v.number for v in registry.get_model("iris").versions] == [1, 2]

    registry.set_alias("iris", "production", 2)
    registry.delete_version("iris", 1)
    assert [v.number for v in registry.get_model("iris").versions] == [2]
    with pytest.raises(NotFound, match="no version 1"):
        registry.resolve("iris:1")
    with pytest.raises(NotFound, match="no version 1"):
        registry.delete_version("iris", 1)
    # Numbers are never reused after the latest is deleted from the middle.
    assert register_iris(registry, iris_files).number == 3


def test_delete_model_refused_with_aliases(registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(registry, iris_files, aliases=("production",))
    register_iris(registry, iris_files)
    with pytest.raises(Conflict, match="iris@production"):
        registry.delete_model("iris")
    assert registry.resolve("iris").number == 1

    registry.remove_alias("iris", "production")
    registry.delete_model("iris")
    with pytest.raises(NotFound, match="not registered"):
        registry.get_model("iris")
    assert registry.list_models() == []
    with pytest.raises(NotFound):
        registry.delete_model("iris")
    # The name can be registered again and starts over.
    assert register_iris(registry, iris_files).number == 1


# listing ------------------------------------------------------------------------------------


def test_list_and_get_models(
    registry: Registry, iris_files: IrisFiles, churn_files: ChurnFiles
) -> None:
    assert registry.list_models() == []
    register_iris(registry, iris_files, description="iris model")
    register_iris(registry, iris_files, description="second")
    register_churn(registry, churn_files)

    models = registry.list_models()
    assert [m.name for m in models] == ["churn", "iris"]
    churn, iris = models
    assert churn.aliases == {"production": 1}
    assert [v.number for v in iris.versions] == [1, 2]
    assert iris.latest is not None
    assert iris.latest.number == 2
    assert iris.aliases == {}
    # The model keeps the description it was created with; versions keep their own.
    assert iris.description == "iris model"
    assert [v.description for v in iris.versions] == ["iris model", "second"]

    got = registry.get_model("iris")
    assert got.to_dict() == {
        "name": "iris",
        "description": "iris model",
        "created_at": got.created_at.isoformat(),
        "latest_version": 2,
        "latest_flavor": "sklearn",
        "versions": [1, 2],
        "aliases": {},
    }
    assert json.loads(json.dumps(churn.to_dict()))["aliases"] == {"production": 1}
    with pytest.raises(NotFound, match="not registered"):
        registry.get_model("nope")


def test_version_info_to_dict_is_json(
    registry: Registry, iris_files: IrisFiles, churn_files: ChurnFiles
) -> None:
    for version in (
        register_iris(registry, iris_files, metrics={"accuracy": 0.9}, tags={"a": "b"}),
        register_churn(registry, churn_files),
    ):
        for info in (version, registry.resolve(version.ref)):
            data = json.loads(json.dumps(info.to_dict()))
            assert data["model"] == info.model
            assert data["version"] == info.number
            assert data["sha256"] == info.artifact.sha256
            assert data["signature"] == info.signature.to_dict()
            assert data["aliases"] == list(info.aliases)
            assert data["example"] == info.example
            created = datetime.fromisoformat(data["created_at"])
            assert created.utcoffset() is not None, "timestamps carry their UTC offset"


def test_timestamps_are_utc_aware(registry: Registry, iris_files: IrisFiles) -> None:
    before = datetime.now().astimezone()
    version = register_iris(registry, iris_files)
    for created in (
        version.created_at,
        registry.resolve("iris").created_at,
        registry.get_model("iris").created_at,
    ):
        assert created.tzinfo is not None
        assert abs((created - before).total_seconds()) < 60


# concurrency --------------------------------------------------------------------------------


@pytest.mark.parametrize("existing", [False, True], ids=["new-model", "existing-model"])
def test_concurrent_registrations_get_consecutive_numbers(
    registry: Registry, iris_files: IrisFiles, existing: bool
) -> None:
    first = register_iris(registry, iris_files).number if existing else 0
    threads = 8
    barrier = threading.Barrier(threads)

    def register(_: int) -> VersionInfo:
        barrier.wait()
        return register_iris(registry, iris_files)

    with ThreadPoolExecutor(threads) as pool:
        numbers = sorted(v.number for v in pool.map(register, range(threads)))
    assert numbers == list(range(first + 1, first + threads + 1))
    assert [v.number for v in registry.get_model("iris").versions] == list(
        range(1, first + threads + 1)
    )


# directory artifacts ------------------------------------------------------------------------

DIRECTORY_MODEL = """
import numpy as np


class Scaled:
    def load(self, path):
        self.weights = np.loadtxt(path / "weights.txt")

    def predict(self, inputs):
        return np.asarray(inputs, dtype=float) @ self.weights
"""


def test_directory_artifact_registers_and_fetches(registry: Registry, tmp_path: Path) -> None:
    folder = tmp_path / "scaled"
    folder.mkdir()
    (folder / "model.py").write_text(textwrap.dedent(DIRECTORY_MODEL))
    (folder / "weights.txt").write_text("1\n10\n100\n")
    sample = tmp_path / "sample.npy"
    np.save(sample, np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]))

    version = register(registry, RegisterRequest(name="scaled", path=folder, sample=sample))
    assert version.flavor == "python"
    assert version.artifact.is_directory
    assert version.artifact.entry == ""
    assert version.signature.inputs[0].shape == (-1, 3)
    assert [o.name for o in version.signature.outputs] == ["predict"]

    # The runtime loads the stored copy, not the folder it was registered from.
    (folder / "weights.txt").write_text("0\n0\n0\n")
    entry = artifact_path(registry, registry.resolve("scaled"))
    assert entry.name == "model.py"
    assert entry.parent != folder
    assert (entry.parent / "weights.txt").read_text() == "1\n10\n100\n"
    runtime = load_runtime("python", entry)
    prediction = runtime.predict(np.array([[1.0, 2.0, 3.0]]))
    assert np.asarray(prediction.predictions).tolist() == [321.0]


def test_file_artifact_fetches_the_file(registry: Registry, iris_files: IrisFiles) -> None:
    version = register_iris(registry, iris_files)
    assert version.pickle_trusted
    path = artifact_path(registry, version)
    assert path.name == "model.joblib"
    assert path.read_bytes() == iris_files[0].read_bytes()
    runtime = load_version(registry, version)
    assert len(runtime.predict(np.load(iris_files[1])).predictions) == 20


# audit --------------------------------------------------------------------------------------


def _audit(registry: Registry) -> list[tuple[str, str, str, str, str | None]]:
    """Every audit row, oldest first: (actor, action, target, outcome, address)."""
    return [
        (e.actor, e.action, e.target, e.outcome, e.address)
        for e in reversed(AuditLog(registry.db).list(limit=1000))
    ]


def test_every_change_is_audited_with_its_actor(registry: Registry, iris_files: IrisFiles) -> None:
    who = {"actor": "key:ops", "address": "10.0.0.7"}
    register_iris(registry, iris_files, aliases=("production",), **who)
    register_iris(registry, iris_files, **who)
    registry.set_alias("iris", "staging", 2, **who)
    registry.set_alias("iris", "production", 2, **who)
    registry.remove_alias("iris", "staging", **who)
    registry.delete_version("iris", 1, **who)
    registry.remove_alias("iris", "production", **who)
    registry.delete_model("iris", **who)

    assert _audit(registry) == [
        ("key:ops", "model.register", "iris:1", "ok", "10.0.0.7"),
        ("key:ops", "model.register", "iris:2", "ok", "10.0.0.7"),
        ("key:ops", "alias.set", "iris@staging", "ok", "10.0.0.7"),
        ("key:ops", "alias.set", "iris@production", "ok", "10.0.0.7"),
        ("key:ops", "alias.remove", "iris@staging", "ok", "10.0.0.7"),
        ("key:ops", "version.delete", "iris:1", "ok", "10.0.0.7"),
        ("key:ops", "alias.remove", "iris@production", "ok", "10.0.0.7"),
        ("key:ops", "model.delete", "iris", "ok", "10.0.0.7"),
    ]
    details = [e.detail for e in reversed(AuditLog(registry.db).list())]
    assert details[0] == {
        "flavor": "sklearn",
        "sha256": file_sha256(iris_files[0]),
        "trust_pickle": True,
        "trusted_types": [],
        "aliases": ["production"],
    }
    assert details[3] == {"version": 2, "previous": 1}
    assert details[4] == {"version": 2}
    assert details[5] == {"flavor": "sklearn", "sha256": file_sha256(iris_files[0])}
    assert details[7] == {"versions": [2]}


def test_refused_changes_are_audited_and_change_nothing(
    registry: Registry, iris_files: IrisFiles
) -> None:
    register_iris(registry, iris_files, aliases=("production",), actor="alice")
    with pytest.raises(Conflict):
        registry.delete_version("iris", 1, actor="bob", address="192.0.2.1")
    with pytest.raises(Conflict):
        registry.delete_model("iris", actor="bob")
    with pytest.raises(NotFound):
        registry.set_alias("iris", "production", 9, actor="bob")
    with pytest.raises(NotFound):
        registry.remove_alias("iris", "ghost", actor="bob")
    with pytest.raises(InvalidInput):
        register_iris(registry, iris_files, trust_pickle=False, actor="bob")

    assert _audit(registry) == [
        ("alice", "model.register", "iris:1", "ok", None),
        ("bob", "version.delete", "iris:1", "refused", "192.0.2.1"),
        ("bob", "model.delete", "iris", "refused", None),
        ("bob", "alias.set", "iris@production", "refused", None),
        ("bob", "alias.remove", "iris@ghost", "refused", None),
        ("bob", "model.register", "iris", "refused", None),
    ]
    refused = AuditLog(registry.db).list()
    assert all("error" in (e.detail or {}) for e in refused[:-1])
    assert "iris@production" in (refused[-2].detail or {})["error"]
    # The refused actions changed nothing.
    assert registry.resolve("iris@production").number == 1
    assert [v.number for v in registry.get_model("iris").versions] == [1]


def test_the_cli_user_is_the_default_actor(registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(registry, iris_files)
    registry.set_alias("iris", "production", 1)
    assert {actor for actor, *_ in _audit(registry)} == {cli_actor()}
    assert cli_actor().startswith("cli:")


def test_a_change_and_its_audit_row_commit_together(
    registry: Registry, iris_files: IrisFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = service._version_info

    def fail_late(row: object) -> VersionInfo:
        raise RuntimeError("the database went away before commit")

    monkeypatch.setattr(service, "_version_info", fail_late)
    with pytest.raises(RuntimeError):
        register_iris(registry, iris_files, actor="alice")
    monkeypatch.setattr(service, "_version_info", real)

    # Neither the version nor its audit row was written (nor a 'refused' row: not a refusal).
    with pytest.raises(NotFound):
        registry.get_model("iris")
    with registry.db.session() as session:
        assert session.query(AuditRow).count() == 0


# migrations ---------------------------------------------------------------------------------


def _head() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def test_migrate_twice_is_a_no_op(registry: Registry, iris_files: IrisFiles) -> None:
    register_iris(registry, iris_files, aliases=("production",))
    registry.db.migrate()
    registry.db.migrate()
    with registry.db.engine.connect() as connection:
        revisions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
    assert [r[0] for r in revisions] == [_head()]
    assert registry.resolve("iris@production").number == 1


def test_migrations_match_the_tables(registry: Registry) -> None:
    with registry.db.engine.connect() as connection:
        # Alembic's own comparison: nothing to autogenerate means the head is the ORM schema.
        diffs = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diffs == []
        reflected = inspect(connection)
        tables = set(reflected.get_table_names()) - {"alembic_version"}
        assert tables == set(Base.metadata.tables)
        for name, table in Base.metadata.tables.items():
            columns = {c["name"]: c for c in reflected.get_columns(name)}
            assert set(columns) == set(table.columns.keys()), name
            for column in table.columns:
                assert columns[column.name]["nullable"] == column.nullable, (name, column.name)


def test_migrate_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'sub' / 'registry.db'}")
    try:
        database.migrate()
        database.migrate()
        with database.engine.connect() as connection:
            version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
            tables = set(inspect(connection).get_table_names())
        assert version == _head()
        assert tables == {*Base.metadata.tables, "alembic_version"}
    finally:
        database.dispose()
