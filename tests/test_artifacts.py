"""The content-addressed artifact store: digests, idempotent puts, verified fetches."""

from __future__ import annotations

import hashlib
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fsspec
import pytest

from berth.errors import ArtifactIntegrityError, NotFound
from berth.registry.artifacts import (
    ArtifactStore,
    StoredArtifact,
    artifact_sha256,
    directory_sha256,
    file_sha256,
)
from berth.registry.service import Registry
from berth.runtimes.loading import artifact_path
from tests.conftest import register_iris

IrisFiles = tuple[Path, Path]


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "store"), tmp_path / "cache")


def _folder(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_text("class M:\n    pass\n")
    (root / "data").mkdir()
    (root / "data" / "weights.bin").write_bytes(bytes(range(256)) * 10)
    (root / "README").write_text("weights for M\n")
    return root


def _stored_path(store: ArtifactStore, artifact: StoredArtifact, rel: str) -> Path:
    path = Path(artifact.uri) / rel
    assert path.is_relative_to(Path(store.root))
    return path


# digests ------------------------------------------------------------------------------------


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    data = b"model bytes\n" * 200_000  # more than one read chunk
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    assert artifact_sha256(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    assert file_sha256(empty) == hashlib.sha256(b"").hexdigest()


def test_directory_digest_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    original = _folder(tmp_path / "a")
    digest = directory_sha256(original)
    assert artifact_sha256(original) == digest

    # A copy elsewhere, with byte-code caches added, has the same address.
    copy = tmp_path / "elsewhere" / "b"
    shutil.copytree(original, copy)
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\x00\x01")
    assert directory_sha256(copy) == digest

    # The manifest is `<sha256>  <relative path>` per file, sorted.
    manifest = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(original).as_posix()}\n"
        for p in sorted(f for f in original.rglob("*") if f.is_file())
    )
    assert digest == hashlib.sha256(manifest.encode()).hexdigest()

    (copy / "data" / "weights.bin").write_bytes(b"other weights")
    assert directory_sha256(copy) != digest
    shutil.rmtree(copy)
    shutil.copytree(original, copy)
    (copy / "data" / "weights.bin").rename(copy / "data" / "weights2.bin")
    assert directory_sha256(copy) != digest, "a renamed file changes the address"
    shutil.rmtree(copy)
    shutil.copytree(original, copy)
    (copy / "extra.txt").write_text("")
    assert directory_sha256(copy) != digest, "an added empty file changes the address"


# put ----------------------------------------------------------------------------------------


def test_put_file_is_content_addressed_and_idempotent(
    store: ArtifactStore, iris_files: IrisFiles
) -> None:
    model = iris_files[0]
    first = store.put(model)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert first.sha256 == digest
    assert first.uri.endswith(f"/sha256/{digest}")
    assert first.entry == "model.joblib"
    assert not first.is_directory
    assert first.size_bytes == model.stat().st_size
    stored = _stored_path(store, first, "model.joblib")
    assert stored.read_bytes() == model.read_bytes()
    mtime = stored.stat().st_mtime_ns

    assert store.put(model) == first
    assert stored.stat().st_mtime_ns == mtime, "an intact stored copy is not rewritten"
    files = [p for p in Path(store.root).rglob("*") if p.is_file()]
    assert files == [stored]


def test_put_directory(store: ArtifactStore, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "model")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "x.pyc").write_bytes(b"cache")
    artifact = store.put(folder)
    assert artifact.sha256 == directory_sha256(folder)
    assert artifact.is_directory
    assert artifact.entry == ""
    assert artifact.size_bytes == sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    stored = sorted(p.relative_to(artifact.uri).as_posix() for p in Path(artifact.uri).rglob("*"))
    assert stored == ["README", "data", "data/weights.bin", "model.py"]
    assert store.put(folder) == artifact


def test_put_repairs_a_damaged_stored_copy(store: ArtifactStore, iris_files: IrisFiles) -> None:
    artifact = store.put(iris_files[0])
    stored = _stored_path(store, artifact, artifact.entry)
    data = bytearray(stored.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    stored.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError):
        store.fetch(artifact)
    # Registering the model again (another put) restores the store, as the error suggests.
    assert store.put(iris_files[0]) == artifact
    assert store.fetch(artifact).read_bytes() == iris_files[0].read_bytes()


def test_concurrent_puts_of_one_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "model")
    (folder / "big.bin").write_bytes(b"x" * 3_000_000)
    barrier = threading.Barrier(6)

    def put(_: int) -> StoredArtifact:
        barrier.wait()
        return store.put(folder)

    with ThreadPoolExecutor(6) as pool:
        artifacts = set(pool.map(put, range(6)))
    assert len(artifacts) == 1
    artifact = artifacts.pop()
    leftovers = [p.name for p in Path(artifact.uri).rglob("*.partial")]
    assert leftovers == []
    assert directory_sha256(store.fetch(artifact)) == artifact.sha256


def test_put_rejects_missing_and_empty(store: ArtifactStore, tmp_path: Path) -> None:
    from berth.errors import InvalidInput

    with pytest.raises(InvalidInput, match="does not exist"):
        store.put(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="empty"):
        store.put(tmp_path / "empty")


# fetch --------------------------------------------------------------------------------------


def test_fetch_returns_a_verified_copy(store: ArtifactStore, iris_files: IrisFiles) -> None:
    artifact = store.put(iris_files[0])
    path = store.fetch(artifact)
    assert path == store.cache_dir / artifact.sha256 / "model.joblib"
    assert path.read_bytes() == iris_files[0].read_bytes()
    assert file_sha256(path) == artifact.sha256
    # The copy is the cache's own: changing the original source changes nothing.
    assert not path.samefile(iris_files[0])
    assert store.fetch(artifact) == path


def test_fetch_directory(store: ArtifactStore, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "model")
    artifact = store.put(folder)
    local = store.fetch(artifact)
    assert local == store.cache_dir / artifact.sha256
    assert (local / "data" / "weights.bin").read_bytes() == (
        folder / "data" / "weights.bin"
    ).read_bytes()
    assert directory_sha256(local) == artifact.sha256
    # Byte-code a runtime writes next to the code is not damage.
    (local / "__pycache__").mkdir()
    (local / "__pycache__" / "model.pyc").write_bytes(b"pyc")
    assert store.fetch(artifact) == local


def test_tampered_store_is_refused(store: ArtifactStore, iris_files: IrisFiles) -> None:
    artifact = store.put(iris_files[0])
    _stored_path(store, artifact, artifact.entry).write_bytes(b"not the model")
    with pytest.raises(ArtifactIntegrityError) as caught:
        store.fetch(artifact)
    assert artifact.sha256 in caught.value.message
    assert "will not be loaded" in caught.value.message
    # The bad bytes are not left in the cache for anything else to pick up.
    assert not (store.cache_dir / artifact.sha256).exists()
    with pytest.raises(ArtifactIntegrityError):
        store.fetch(artifact)


def test_tampered_directory_in_store_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    artifact = store.put(_folder(tmp_path / "model"))
    (Path(artifact.uri) / "extra.py").write_text("import os\n")
    with pytest.raises(ArtifactIntegrityError):
        store.fetch(artifact)


def test_registry_never_hands_out_a_tampered_artifact(
    sqlite_registry: Registry, iris_files: IrisFiles
) -> None:
    version = register_iris(sqlite_registry, iris_files)
    stored = Path(version.artifact.uri) / version.artifact.entry
    stored.write_bytes(stored.read_bytes()[:-10] + b"0123456789")
    # artifact_path is the only way to a loadable path: it raises instead of returning one.
    with pytest.raises(ArtifactIntegrityError):
        artifact_path(sqlite_registry, sqlite_registry.resolve("iris"))
    assert not any(sqlite_registry.store.cache_dir.rglob("model.joblib"))


def test_damaged_cache_is_repaired_from_the_store(
    store: ArtifactStore, iris_files: IrisFiles, tmp_path: Path
) -> None:
    artifact = store.put(iris_files[0])
    path = store.fetch(artifact)
    path.write_bytes(b"damaged")
    assert store.fetch(artifact) == path
    assert path.read_bytes() == iris_files[0].read_bytes()

    path.unlink()  # a half-deleted cache entry
    assert store.fetch(artifact).read_bytes() == iris_files[0].read_bytes()

    folder = store.put(_folder(tmp_path / "model"))
    local = store.fetch(folder)
    (local / "data" / "weights.bin").write_bytes(b"")
    (local / "stray.txt").write_text("stray")
    assert store.fetch(folder) == local
    assert directory_sha256(local) == folder.sha256
    assert not (local / "stray.txt").exists()


def test_concurrent_fetches_share_one_cache(store: ArtifactStore, tmp_path: Path) -> None:
    folder = _folder(tmp_path / "model")
    (folder / "big.bin").write_bytes(b"y" * 3_000_000)
    artifact = store.put(folder)
    barrier = threading.Barrier(6)

    def fetch(_: int) -> Path:
        barrier.wait()
        return store.fetch(artifact)

    with ThreadPoolExecutor(6) as pool:
        paths = set(pool.map(fetch, range(6)))
    assert paths == {store.cache_dir / artifact.sha256}
    assert [p.name for p in store.cache_dir.iterdir()] == [artifact.sha256]


def test_missing_artifact_is_not_found(store: ArtifactStore, iris_files: IrisFiles) -> None:
    artifact = store.put(iris_files[0])
    shutil.rmtree(artifact.uri)
    with pytest.raises(NotFound) as caught:
        store.fetch(artifact)
    assert artifact.sha256[:12] in caught.value.message
    assert "register the model again" in caught.value.message
    assert not (store.cache_dir / artifact.sha256).exists()


def test_memory_url_store(tmp_path: Path, iris_files: IrisFiles) -> None:
    url = f"memory://berth-test-{uuid.uuid4().hex}"
    store = ArtifactStore(url + "/", tmp_path / "cache")
    memory = fsspec.filesystem("memory")
    try:
        artifact = store.put(iris_files[0])
        folder = store.put(_folder(tmp_path / "model"))
        assert store.info()["url"] == url
        # The bytes live in the in-memory filesystem, not on disk.
        assert memory.cat_file(f"{artifact.uri}/model.joblib") == iris_files[0].read_bytes()
        assert not Path(artifact.uri).exists()
        assert store.put(iris_files[0]) == artifact

        path = store.fetch(artifact)
        assert path.read_bytes() == iris_files[0].read_bytes()
        assert directory_sha256(store.fetch(folder)) == folder.sha256

        memory.pipe_file(f"{folder.uri}/model.py", b"class Evil: ...\n")
        shutil.rmtree(store.cache_dir / folder.sha256)
        with pytest.raises(ArtifactIntegrityError):
            store.fetch(folder)
    finally:
        memory.rm(url.removeprefix("memory://"), recursive=True)
