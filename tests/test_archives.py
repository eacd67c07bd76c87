"""Model archives: unpacked into a private folder, refusing anything but files and folders."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from berth.errors import InvalidInput
from berth.registry.archives import MAX_BYTES, is_archive, safe_extract

FILES = {
    "model/model.py": b"class Model: ...\n",
    "model/weights/layer1.txt": b"1 2 3\n",
    "model/weights/deep/layer2.txt": b"4 5 6\n",
}


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, data in files.items():
            bundle.writestr(name, data)
    return path


def _tar_with(path: Path, member: tarfile.TarInfo, data: bytes | None = None) -> Path:
    """A tar.gz holding one good file and then `member`."""
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("model/model.py")
        good.size = 3
        tar.addfile(good, io.BytesIO(b"x=1"))
        tar.addfile(member, io.BytesIO(data) if data is not None else None)
    return path


def _zip_with(path: Path, info: zipfile.ZipInfo, data: bytes = b"x") -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        bundle.writestr("model/model.py", b"x=1")
        bundle.writestr(info, data)
    return path


def _refused(archive: Path, destination: Path, *fragments: str, **caps: int) -> str:
    with pytest.raises(InvalidInput) as caught:
        safe_extract(archive, destination, **caps)
    message = caught.value.message
    for fragment in fragments:
        assert fragment in message
    # Nothing is left behind, inside or beside the destination.
    assert not destination.exists() or not any(destination.iterdir())
    assert not (destination.parent / "evil").exists()
    return message


# happy paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "mode"),
    [("m.tar.gz", "w:gz"), ("m.tgz", "w:gz"), ("m.tar", "w"), ("M.TAR.GZ", "w:gz")],
)
def test_tar_with_nested_folders(tmp_path: Path, name: str, mode: str) -> None:
    archive = _tar(tmp_path / name, FILES, mode)
    assert is_archive(archive)

    root = safe_extract(archive, tmp_path / "out")

    # One top-level folder: it is the model's root.
    assert root == tmp_path / "out" / "model"
    for member, data in FILES.items():
        assert (tmp_path / "out" / member).read_bytes() == data


def test_zip_with_nested_folders(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "m.zip", FILES)

    root = safe_extract(archive, tmp_path / "out")

    assert root == tmp_path / "out" / "model"
    assert (root / "weights" / "deep" / "layer2.txt").read_bytes() == b"4 5 6\n"


def test_archive_of_loose_files_roots_at_the_destination(tmp_path: Path) -> None:
    # `tar czf m.tgz -C dir .` writes "./" and "./name" members.
    with tarfile.open(tmp_path / "m.tgz", "w:gz") as tar:
        tar.addfile(_dir_info("./"))
        for name in ("./model.py", "./weights.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"ok"))

    root = safe_extract(tmp_path / "m.tgz", tmp_path / "out")

    assert root == tmp_path / "out"
    assert sorted(p.name for p in root.iterdir()) == ["model.py", "weights.txt"]


def test_extracted_files_are_private(tmp_path: Path) -> None:
    root = safe_extract(_tar(tmp_path / "m.tgz", FILES), tmp_path / "out")

    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "model.py").stat().st_mode) == 0o600


def test_macos_resource_forks_are_skipped(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "m.zip", {**FILES, "__MACOSX/model/._model.py": b"junk"})

    safe_extract(archive, tmp_path / "out")

    assert not (tmp_path / "out" / "__MACOSX").exists()


# attacks -------------------------------------------------------------------------------------


def _dir_info(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def _file_info(name: str, size: int = 4) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ("../evil", "'..'"),
        ("model/../../evil", "'..'"),
        ("/tmp/evil", "absolute"),
        ("C:/evil", "absolute"),
        ("model\\..\\..\\evil", "backslash"),
    ],
)
def test_tar_paths_outside_are_refused(tmp_path: Path, member: str, why: str) -> None:
    archive = _tar_with(tmp_path / "a.tgz", _file_info(member), b"evil")

    _refused(archive, tmp_path / "out", f"member '{member}'", why)


@pytest.mark.parametrize(
    ("member", "why"),
    [("../evil", "'..'"), ("/tmp/evil", "absolute"), ("model/../../evil", "'..'")],
)
def test_zip_paths_outside_are_refused(tmp_path: Path, member: str, why: str) -> None:
    info = zipfile.ZipInfo("placeholder")
    info.filename = member  # ZipInfo() itself strips a leading '/': write the raw name
    archive = _zip_with(tmp_path / "a.zip", info, b"evil")

    _refused(archive, tmp_path / "out", f"member '{member}'", why)


def test_tar_symlink_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("model/passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"

    _refused(_tar_with(tmp_path / "a.tgz", link), tmp_path / "out", "'model/passwd'", "symlink")


def test_tar_symlink_then_write_through_it_is_refused(tmp_path: Path) -> None:
    """The classic two-step: a link to a folder outside, then a file 'inside' the link."""
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:
        link = tarfile.TarInfo("escape")
        link.type = tarfile.SYMTYPE
        link.linkname = str(tmp_path)
        tar.addfile(link)
        tar.addfile(_file_info("escape/evil"), io.BytesIO(b"evil"))

    _refused(tmp_path / "a.tgz", tmp_path / "out", "'escape'", "symlink")


def test_tar_hard_link_is_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("model/shadow")
    link.type = tarfile.LNKTYPE
    link.linkname = "/etc/shadow"

    _refused(_tar_with(tmp_path / "a.tgz", link), tmp_path / "out", "'model/shadow'", "hard link")


@pytest.mark.parametrize(
    ("kind", "why"),
    [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")],
)
def test_tar_devices_and_fifos_are_refused(tmp_path: Path, kind: bytes, why: str) -> None:
    device = tarfile.TarInfo("model/null")
    device.type = kind
    device.devmajor, device.devminor = 1, 3

    _refused(_tar_with(tmp_path / "a.tgz", device), tmp_path / "out", "'model/null'", why)


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("model/passwd")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16

    archive = _zip_with(tmp_path / "a.zip", info, b"/etc/passwd")

    _refused(archive, tmp_path / "out", "'model/passwd'", "symlink")


def test_zip_device_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("model/null")
    info.external_attr = (stat.S_IFCHR | 0o666) << 16

    _refused(_zip_with(tmp_path / "a.zip", info), tmp_path / "out", "'model/null'", "device")


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_too_many_members_is_refused(tmp_path: Path, kind: str) -> None:
    files = {f"model/f{i}.txt": b"." for i in range(20)}
    archive = _tar(tmp_path / "a.tgz", files) if kind == "tar" else _zip(tmp_path / "a.zip", files)

    _refused(archive, tmp_path / "out", "more than 10 members", "'model/f10.txt'", max_members=10)


@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_too_many_bytes_is_refused(tmp_path: Path, kind: str) -> None:
    # A small archive that unpacks to 3 MiB of zeros: an archive bomb under a 1 MiB cap.
    files = {"model/a.bin": bytes(1024**2), "model/b.bin": bytes(2 * 1024**2)}
    archive = _tar(tmp_path / "a.tgz", files) if kind == "tar" else _zip(tmp_path / "a.zip", files)
    assert archive.stat().st_size < 64 * 1024

    _refused(
        archive, tmp_path / "out", "more than 1048576 bytes", "'model/b.bin'", max_bytes=1024**2
    )


def test_huge_declared_size_is_refused_before_reading(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with archive.open("wb") as out:
        info = _file_info("model/huge.bin", size=MAX_BYTES + 1)
        out.write(info.tobuf(format=tarfile.GNU_FORMAT))  # header only: the data never comes

    _refused(archive, tmp_path / "out", f"more than {MAX_BYTES} bytes", "'model/huge.bin'")


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:
        for data in (b"good", b"evil"):
            tar.addfile(_file_info("model/model.py"), io.BytesIO(data))

    _refused(tmp_path / "a.tgz", tmp_path / "out", "'model/model.py'", "twice")


def test_folder_listed_twice_is_fine(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:
        tar.addfile(_dir_info("model"))
        tar.addfile(_file_info("model/model.py"), io.BytesIO(b"x=1\n"))
        tar.addfile(_dir_info("model/"))

    root = safe_extract(tmp_path / "a.tgz", tmp_path / "out")

    assert (root / "model.py").read_bytes() == b"x=1\n"


def test_folder_over_a_file_is_refused(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tgz", "w:gz") as tar:
        tar.addfile(_file_info("model/model.py"), io.BytesIO(b"x=1\n"))
        tar.addfile(_dir_info("model/model.py"))

    _refused(tmp_path / "a.tgz", tmp_path / "out", "'model/model.py'", "clashes")


def test_file_clashing_with_a_folder_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tgz", {"model": b"file", "model/x.txt": b"x"})

    _refused(archive, tmp_path / "out", "'model/x.txt'", "clashes")


# not archives --------------------------------------------------------------------------------


def test_corrupt_archive_is_invalid_input(tmp_path: Path) -> None:
    (tmp_path / "a.tgz").write_bytes(b"\x1f\x8b not really gzip")

    _refused(tmp_path / "a.tgz", tmp_path / "out", "could not unpack a.tgz")


def test_empty_archive_is_refused(tmp_path: Path) -> None:
    _refused(_zip(tmp_path / "a.zip", {}), tmp_path / "out", "holds no files")


def test_destination_must_be_empty(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")

    with pytest.raises(InvalidInput, match="not empty"):
        safe_extract(_tar(tmp_path / "a.tgz", FILES), tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_other_files_are_not_archives(tmp_path: Path) -> None:
    (tmp_path / "model.skops").write_bytes(b"PK")
    assert not is_archive(tmp_path / "model.skops")
    assert not is_archive(tmp_path / "missing.tar.gz")
    with pytest.raises(InvalidInput, match="not a model archive"):
        safe_extract(tmp_path / "model.skops", tmp_path / "out")
