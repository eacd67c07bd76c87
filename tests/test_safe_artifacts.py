"""Safe artifacts: pickles only when trusted, the skops allow-list, archives, names, swaps."""

from __future__ import annotations

import io
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from berth.config import Settings
from berth.errors import ArtifactIntegrityError, InvalidInput, ModelLoadError, NotFound
from berth.registration import artifact as staged_loading
from berth.registration.service import RegisterRequest, register
from berth.registry.artifacts import file_sha256
from berth.registry.service import Registry
from berth.registry.versions import VersionInfo
from berth.runtimes import UntrustedArtifact, load_runtime, loading
from berth.runtimes.loading import artifact_path, load_version
from berth.store.audit import AuditEvent, AuditLog

FEATURES, TARGET = load_iris(return_X_y=True)
ROWS = FEATURES[:5]
DOUBLER = f"{__name__}.Doubler"


class Doubler(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """A custom transformer: skops cannot know whether its code is safe."""

    def fit(self, features: Any, target: Any = None) -> Doubler:
        return self

    def transform(self, features: Any) -> Any:
        return np.asarray(features) * 2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same iris classifier as joblib and skops, a custom-type skops pipeline, a sample."""
    folder = tmp_path_factory.mktemp("safe")
    model = LogisticRegression(max_iter=1000).fit(FEATURES, TARGET)
    joblib.dump(model, folder / "model.joblib")
    sio.dump(model, folder / "model.skops")
    custom = make_pipeline(Doubler(), LogisticRegression(max_iter=1000)).fit(FEATURES, TARGET)
    sio.dump(custom, folder / "custom.skops")
    np.save(folder / "sample.npy", FEATURES[:20])
    return {
        "joblib": folder / "model.joblib",
        "skops": folder / "model.skops",
        "custom": folder / "custom.skops",
        "sample": folder / "sample.npy",
    }


@pytest.fixture
def registry(sqlite_registry: Registry) -> Registry:
    return sqlite_registry


def _register(registry: Registry, path: Path, sample: Path, **extra: Any) -> VersionInfo:
    return register(
        registry, RegisterRequest(name="iris", path=path, sample=sample, actor="tester", **extra)
    )


def _events(registry: Registry) -> list[AuditEvent]:
    return list(reversed(AuditLog(registry.db).list()))


def _predicts(registry: Registry, version: VersionInfo) -> None:
    runtime = load_version(registry, version)
    assert runtime.predict(ROWS).predictions.tolist() == [0, 0, 0, 0, 0]


# pickles -------------------------------------------------------------------------------------


def test_pickle_is_refused_without_trust(registry: Registry, files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput) as caught:
        _register(registry, files["joblib"], files["sample"])
    message = caught.value.message
    assert "model.joblib is a pickle" in message
    assert "runs any code" in message
    assert 'skops.io.dump(model, "model.skops")' in message
    assert "--trust-pickle" in message
    with pytest.raises(NotFound):
        registry.get_model("iris")
    [event] = _events(registry)
    assert (event.actor, event.action, event.target, event.outcome) == (
        "tester",
        "model.register",
        "iris",
        "refused",
    )
    assert event.detail is not None
    assert event.detail["trust_pickle"] is False
    assert "is a pickle" in event.detail["error"]


def test_trusted_pickle_registers_audits_and_loads(
    registry: Registry, files: dict[str, Path]
) -> None:
    version = _register(registry, files["joblib"], files["sample"], trust_pickle=True)

    assert version.pickle_trusted
    assert registry.resolve("iris").pickle_trusted
    assert version.to_dict()["pickle_trusted"] is True
    [event] = _events(registry)
    assert (event.actor, event.action, event.target, event.outcome) == (
        "tester",
        "model.register",
        "iris:1",
        "ok",
    )
    assert event.detail == {
        "flavor": "sklearn",
        "sha256": file_sha256(files["joblib"]),
        "trust_pickle": True,
        "trusted_types": [],
        "aliases": [],
    }
    _predicts(registry, version)
    # Serving the old way (a path and no trust) never unpickles it.
    with pytest.raises(UntrustedArtifact, match="--trust-pickle"):
        load_runtime(version.flavor, artifact_path(registry, version))


def test_trust_pickle_on_a_skops_file_records_no_pickle_trust(
    registry: Registry, files: dict[str, Path]
) -> None:
    version = _register(registry, files["skops"], files["sample"], trust_pickle=True)
    assert not version.pickle_trusted
    _predicts(registry, version)


def test_registration_loads_and_stores_the_same_bytes(
    registry: Registry, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file swapped after Berth copied it changes nothing: the private copy is what counts."""
    source = tmp_path / "model.joblib"
    shutil.copyfile(files["joblib"], source)
    original = file_sha256(source)
    real_load = staged_loading.load_runtime

    def swap_then_load(*args: Any, **kwargs: Any) -> Any:
        joblib.dump({"not": "the model"}, source)  # the attacker's swap, mid-registration
        return real_load(*args, **kwargs)

    monkeypatch.setattr(staged_loading, "load_runtime", swap_then_load)
    version = _register(registry, source, files["sample"], trust_pickle=True)

    assert file_sha256(source) != original
    assert version.artifact.sha256 == original
    assert artifact_path(registry, version).read_bytes() == files["joblib"].read_bytes()


def test_pickle_swapped_in_the_store_is_refused_at_load(
    registry: Registry, files: dict[str, Path]
) -> None:
    version = _register(registry, files["joblib"], files["sample"], trust_pickle=True)
    stored = Path(version.artifact.uri) / version.artifact.entry
    joblib.dump(LogisticRegression(C=0.01, max_iter=1000).fit(FEATURES, TARGET), stored)

    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        load_version(registry, version)


def test_skops_swapped_in_the_store_is_refused_at_load(
    registry: Registry, files: dict[str, Path]
) -> None:
    version = _register(registry, files["skops"], files["sample"])
    stored = Path(version.artifact.uri) / version.artifact.entry
    sio.dump(LogisticRegression(C=0.01, max_iter=1000).fit(FEATURES, TARGET), stored)

    with pytest.raises(ArtifactIntegrityError, match="changed after registration"):
        load_version(registry, version)


def _swap_after_fetch(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, swap: Callable[[Path], None]
) -> None:
    """Change the local copy right after `fetch` verified it (a race with the cache)."""
    real_fetch = registry.store.fetch

    def fetch_then_swap(artifact: Any) -> Path:
        local = real_fetch(artifact)
        swap(local)
        return local

    monkeypatch.setattr(registry.store, "fetch", fetch_then_swap)


def _swap_before_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Change the entry file after every check the registry makes, just before the runtime."""
    real_load = loading.load_runtime

    def swap_then_load(flavor: str, entry: Path, **trust: Any) -> Any:
        joblib.dump({"evil": 1}, entry)
        return real_load(flavor, entry, **trust)

    monkeypatch.setattr(loading, "load_runtime", swap_then_load)


def test_pickle_swapped_after_verification_is_never_unpickled(
    registry: Registry, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    version = _register(registry, files["joblib"], files["sample"], trust_pickle=True)
    artifact_path(registry, version)  # cached and verified
    _swap_before_unpickling(monkeypatch)

    with pytest.raises(ArtifactIntegrityError, match="will not be unpickled"):
        load_version(registry, version)


# skops types ---------------------------------------------------------------------------------


def test_custom_type_is_refused_naming_it(registry: Registry, files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput) as caught:
        _register(registry, files["custom"], files["sample"])
    message = caught.value.message
    assert DOUBLER in message
    assert f"--trust-type {DOUBLER}" in message
    assert "BERTH_TRUSTED_TYPES" in message
    [event] = _events(registry)
    assert event.outcome == "refused"
    assert event.detail is not None
    assert DOUBLER in event.detail["error"]


def test_trusted_type_is_recorded_and_loads_later(
    registry: Registry, files: dict[str, Path]
) -> None:
    version = _register(registry, files["custom"], files["sample"], trusted_types=(DOUBLER,))

    assert version.trusted_types == (DOUBLER,)
    stored = registry.resolve("iris:1")
    assert stored.trusted_types == (DOUBLER,)
    [event] = _events(registry)
    assert event.detail is not None
    assert event.detail["trusted_types"] == [DOUBLER]
    # Later, in another process: fetch (verified) and load with the version's own trust.
    path = artifact_path(registry, stored)
    runtime = load_runtime(stored.flavor, path, trusted_types=stored.trusted_types)
    assert runtime.predict(ROWS).predictions.tolist() == [0, 0, 0, 0, 0]
    _predicts(registry, stored)
    # Without it, the same file is refused at load, naming the type.
    with pytest.raises(ModelLoadError, match=DOUBLER):
        load_runtime(stored.flavor, path)


def test_server_wide_trusted_types(
    settings: Settings, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BERTH_TRUSTED_TYPES", f'["{DOUBLER}"]')
    trusting = Registry.from_settings(Settings())
    try:
        version = _register(trusting, files["custom"], files["sample"])
        assert version.trusted_types == ()  # the server trusts it, not the version
        _predicts(trusting, version)
    finally:
        trusting.db.dispose()
    # A server without the setting refuses to load that version.
    monkeypatch.delenv("BERTH_TRUSTED_TYPES")
    plain = Registry.from_settings(Settings())
    try:
        with pytest.raises(UntrustedArtifact, match=DOUBLER):
            load_version(plain, plain.resolve("iris"))
    finally:
        plain.db.dispose()


@pytest.mark.parametrize("bad", ["Doubler", "my package.X", "x.*", "os.system; rm", ""])
def test_trusted_type_names_are_checked(
    registry: Registry, files: dict[str, Path], bad: str
) -> None:
    with pytest.raises(InvalidInput, match="not a type name"):
        _register(registry, files["custom"], files["sample"], trusted_types=(bad,))
    with pytest.raises(InvalidInput, match="BERTH_TRUSTED_TYPES"):
        Registry(registry.db, registry.store, trusted_types=[bad])


def test_trust_type_is_only_for_skops(registry: Registry, files: dict[str, Path]) -> None:
    with pytest.raises(InvalidInput, match="applies to scikit-learn models saved with skops"):
        _register(
            registry, files["joblib"], files["sample"], trust_pickle=True, trusted_types=(DOUBLER,)
        )


# archives ------------------------------------------------------------------------------------


def _tar(path: Path, members: dict[str, Path | bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_tar_archive_registers_as_a_directory(
    registry: Registry, files: dict[str, Path], tmp_path: Path
) -> None:
    archive = _tar(
        tmp_path / "iris.tar.gz",
        {"iris/model.skops": files["skops"], "iris/notes/README.txt": b"trained on iris\n"},
    )

    version = _register(registry, archive, files["sample"])

    assert version.flavor == "sklearn"
    assert version.artifact.is_directory
    entry = artifact_path(registry, version)
    assert entry.name == "model.skops"
    assert (entry.parent / "notes" / "README.txt").read_text() == "trained on iris\n"
    _predicts(registry, version)


def test_zip_archive_with_a_pickle_needs_trust(
    registry: Registry, files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "iris.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.write(files["joblib"], "model.joblib")
        bundle.writestr("extra/labels.txt", "setosa versicolor virginica\n")

    with pytest.raises(InvalidInput, match=r"model\.joblib is a pickle"):
        _register(registry, archive, files["sample"])
    version = _register(registry, archive, files["sample"], trust_pickle=True)
    assert version.artifact.is_directory
    assert version.pickle_trusted
    _predicts(registry, version)
    # In a directory, the pickle's digest comes from the manifest that matches the registered
    # digest: a swap before that check fails it, a swap after it fails the runtime's own check.
    with monkeypatch.context() as patch:
        _swap_after_fetch(
            registry, patch, lambda local: joblib.dump({"evil": 1}, local / "model.joblib")
        )
        with pytest.raises(ArtifactIntegrityError, match="changed after registration"):
            load_version(registry, version)
    shutil.rmtree(registry.store.cache_dir)
    _swap_before_unpickling(monkeypatch)
    with pytest.raises(ArtifactIntegrityError, match="will not be unpickled"):
        load_version(registry, version)


def test_directory_pickle_swapped_in_the_store_is_refused(
    registry: Registry, files: dict[str, Path], tmp_path: Path
) -> None:
    archive = _tar(tmp_path / "iris.tgz", {"model.joblib": files["joblib"], "a.txt": b"a"})
    version = _register(registry, archive, files["sample"], trust_pickle=True)
    joblib.dump({"evil": 1}, Path(version.artifact.uri) / "model.joblib")

    with pytest.raises(ArtifactIntegrityError):
        load_version(registry, version)


def test_unsafe_archive_is_refused_at_registration(
    registry: Registry, files: dict[str, Path], tmp_path: Path
) -> None:
    archive = _tar(tmp_path / "iris.tgz", {"model.skops": files["skops"], "../evil": b"x"})

    with pytest.raises(InvalidInput, match=r"member '\.\./evil'"):
        _register(registry, archive, files["sample"])
    assert not (tmp_path / "evil").exists()
    [event] = _events(registry)
    assert event.outcome == "refused"


# names ---------------------------------------------------------------------------------------

BAD_NAMES = ["../x", "a;DROP TABLE", "a/b", "", ".hidden", "-x", "x" * 129, "a b", "a\x00b"]


@pytest.fixture
def registered(registry: Registry, files: dict[str, Path]) -> Registry:
    _register(registry, files["skops"], files["sample"], aliases=("production",))
    return registry


def _entry_points(
    registry: Registry, name: str, files: dict[str, Path]
) -> dict[str, Callable[[], Any]]:
    return {
        "register": lambda: register(
            registry, RegisterRequest(name=name, path=files["skops"], sample=files["sample"])
        ),
        "get_model": lambda: registry.get_model(name),
        "get_version": lambda: registry.get_version(name, 1),
        "resolve": lambda: registry.resolve(name),
        "resolve-alias": lambda: registry.resolve(f"iris@{name}"),
        "set_alias-model": lambda: registry.set_alias(name, "production", 1),
        "set_alias-alias": lambda: registry.set_alias("iris", name, 1),
        "remove_alias-model": lambda: registry.remove_alias(name, "production"),
        "remove_alias-alias": lambda: registry.remove_alias("iris", name),
        "delete_version": lambda: registry.delete_version(name, 1),
        "delete_model": lambda: registry.delete_model(name),
        "models_with_alias": lambda: registry.models_with_alias(name),
        "register-alias": lambda: register(
            registry,
            RegisterRequest(
                name="iris", path=files["skops"], sample=files["sample"], aliases=(name,)
            ),
        ),
    }


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_bad_names_are_refused_at_every_entry_point(
    registered: Registry, files: dict[str, Path], name: str
) -> None:
    for what, call in _entry_points(registered, name, files).items():
        try:
            call()
        except InvalidInput:
            continue
        pytest.fail(f"{what} accepted {name!r}")
    # Nothing changed.
    assert [m.name for m in registered.list_models()] == ["iris"]
    assert registered.get_model("iris").aliases == {"production": 1}
    assert len(registered.get_model("iris").versions) == 1


def test_long_alias_is_refused_before_the_database(registered: Registry) -> None:
    with pytest.raises(InvalidInput, match="at most 64 characters"):
        registered.set_alias("iris", "a" * 65, 1)
    registered.set_alias("iris", "a" * 64, 1)


@pytest.fixture
def no_temp_leftovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    yield scratch
    assert list(scratch.iterdir()) == []


def test_registration_leaves_no_private_copies(
    registry: Registry, files: dict[str, Path], no_temp_leftovers: Path
) -> None:
    _register(registry, files["skops"], files["sample"])
    with pytest.raises(InvalidInput):
        _register(registry, files["joblib"], files["sample"])
