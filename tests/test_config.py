"""Settings: defaults, BERTH_* variables, TOML files and what `berth config show` prints.

Every test runs through the `settings` fixture: BERTH_* variables cleared, BERTH_HOME set,
working directory a fresh tmp_path (so a stray ./berth.toml is never read).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from berth.config import DEFAULT_PORT, Settings, field_docs, load_settings
from berth.errors import InvalidInput

POSTGRES = "postgresql+psycopg://berth:s3cret@db.internal:5432/registry"


def test_defaults(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BERTH_HOME")
    defaults = Settings()
    assert defaults.home == Path(".berth")
    assert defaults.database_url is None
    assert defaults.artifact_url is None
    assert defaults.secret_key is None
    assert defaults.host == "127.0.0.1"
    assert defaults.port == DEFAULT_PORT == 8321
    assert defaults.workers == 1
    assert defaults.dev is False
    assert defaults.max_body_bytes == 16 * 1024 * 1024
    assert defaults.max_batch_rows == 10_000
    assert defaults.refresh_seconds == 1.0
    assert defaults.log_level == "info"
    assert defaults.served == []


def test_fixture_points_home_at_tmp_path(settings: Settings, tmp_path: Path) -> None:
    assert settings.home == tmp_path / "home"
    assert Path.cwd() == tmp_path


def test_environment_overrides(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env = {
        "BERTH_HOME": str(tmp_path / "elsewhere"),
        "BERTH_DATABASE_URL": POSTGRES,
        "BERTH_ARTIFACT_URL": "s3://bucket/artifacts",
        "BERTH_SECRET_KEY": "k3y",
        "BERTH_HOST": "0.0.0.0",
        "BERTH_PORT": "9000",
        "BERTH_WORKERS": "4",
        "BERTH_DEV": "true",
        "BERTH_MAX_BODY_BYTES": "1024",
        "BERTH_MAX_BATCH_ROWS": "50",
        "BERTH_REFRESH_SECONDS": "0.5",
        "BERTH_LOG_LEVEL": "debug",
        "BERTH_SERVED": '["churn@production", "iris:2"]',
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    found = Settings()
    assert found.home == tmp_path / "elsewhere"
    assert found.database_url == POSTGRES
    assert found.artifact_url == "s3://bucket/artifacts"
    assert isinstance(found.secret_key, SecretStr)
    assert found.secret_key.get_secret_value() == "k3y"
    assert found.host == "0.0.0.0"
    assert found.port == 9000
    assert found.workers == 4
    assert found.dev is True
    assert found.max_body_bytes == 1024
    assert found.max_batch_rows == 50
    assert found.refresh_seconds == 0.5
    assert found.log_level == "debug"
    assert found.served == ["churn@production", "iris:2"]


def test_variables_without_the_prefix_are_ignored(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PORT", "1234")
    assert Settings().port == DEFAULT_PORT


def test_arguments_beat_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BERTH_PORT", "9000")
    assert Settings(port=7000).port == 7000


CONFIG = """
port = 9100
dev = true
served = ["churn", "iris@canary"]
max_batch_rows = 25
database_url = "sqlite:///from-file.db"
not_a_setting = "ignored"
"""


def test_toml_file_from_berth_config(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "conf" / "server.toml"
    path.parent.mkdir()
    path.write_text(CONFIG)
    monkeypatch.setenv("BERTH_CONFIG", str(path))
    found = Settings()
    assert found.port == 9100
    assert found.dev is True
    assert found.served == ["churn", "iris@canary"]
    assert found.max_batch_rows == 25
    assert found.database_url == "sqlite:///from-file.db"
    assert found.host == "127.0.0.1"  # not in the file: the default


def test_toml_file_in_the_working_directory(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert Settings().port == DEFAULT_PORT  # no file yet
    (tmp_path / "berth.toml").write_text(CONFIG)
    assert Settings().port == 9100
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.chdir(other)
    assert Settings().port == DEFAULT_PORT  # only the working directory is looked at


def test_berth_config_beats_the_local_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "berth.toml").write_text("port = 9100\nworkers = 3\n")
    explicit = tmp_path / "explicit.toml"
    explicit.write_text("port = 9200\n")
    monkeypatch.setenv("BERTH_CONFIG", str(explicit))
    found = Settings()
    assert found.port == 9200
    assert found.workers == 1  # the local file is not read at all


def test_environment_beats_the_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "berth.toml").write_text(CONFIG)
    monkeypatch.setenv("BERTH_PORT", "9300")
    monkeypatch.setenv("BERTH_SERVED", '["fraud"]')
    found = Settings()
    assert found.port == 9300
    assert found.served == ["fraud"]
    assert found.max_batch_rows == 25  # the file still supplies what the environment does not


def test_berth_config_that_is_not_a_file(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "typo.toml"
    monkeypatch.setenv("BERTH_CONFIG", str(missing))
    with pytest.raises(InvalidInput) as caught:
        Settings()
    assert f"BERTH_CONFIG is {missing}, which is not a file" in caught.value.message
    monkeypatch.setenv("BERTH_CONFIG", str(tmp_path))
    with pytest.raises(InvalidInput, match="which is not a file"):
        Settings()


def test_empty_berth_config_means_unset(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "berth.toml").write_text("port = 9100\n")
    monkeypatch.setenv("BERTH_CONFIG", "")
    assert Settings().port == 9100


@pytest.mark.parametrize("content", [b"port = [", b"port = 1\nport = 2\n", b"host = '\xff'\n"])
def test_invalid_toml(settings: Settings, tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "berth.toml"
    path.write_bytes(content)
    with pytest.raises(InvalidInput) as caught:
        Settings()
    assert f"config file {path.name}" in caught.value.message
    assert "could not be read as TOML" in caught.value.message


# derived values ------------------------------------------------------------------------------


def test_resolved_urls_default_to_home(settings: Settings, tmp_path: Path) -> None:
    home = (tmp_path / "home").resolve()
    assert settings.resolved_database_url == f"sqlite:///{home / 'registry.db'}"
    assert settings.resolved_database_url.startswith("sqlite:////")  # an absolute path
    assert settings.resolved_artifact_url == str(home / "artifacts")


def test_relative_home_resolves_against_the_working_directory(
    settings: Settings, tmp_path: Path
) -> None:
    relative = settings.model_copy(update={"home": Path(".berth")})
    assert (
        relative.resolved_database_url
        == f"sqlite:///{tmp_path.resolve() / '.berth' / 'registry.db'}"
    )
    assert relative.resolved_artifact_url == str(tmp_path.resolve() / ".berth" / "artifacts")


def test_resolved_urls_use_explicit_values(settings: Settings) -> None:
    explicit = settings.model_copy(
        update={"database_url": POSTGRES, "artifact_url": "s3://bucket/prefix"}
    )
    assert explicit.resolved_database_url == POSTGRES
    assert explicit.resolved_artifact_url == "s3://bucket/prefix"


# what people see ---------------------------------------------------------------------------


def test_redacted_hides_the_secret_key(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BERTH_SECRET_KEY", "very-secret-value")
    found = Settings()
    shown = found.redacted()
    assert shown["secret_key"] == "********"
    assert "very-secret-value" not in repr(shown)
    assert "very-secret-value" not in repr(found)
    assert settings.redacted()["secret_key"] is None  # nothing to hide


def test_redacted_shows_every_field_and_the_resolved_urls(settings: Settings) -> None:
    shown = settings.redacted()
    assert set(shown) == set(Settings.model_fields)
    assert shown["database_url"] == settings.resolved_database_url
    assert shown["artifact_url"] == settings.resolved_artifact_url
    assert shown["port"] == DEFAULT_PORT
    assert shown["served"] == []


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (POSTGRES, "postgresql+psycopg://berth:********@db.internal:5432/registry"),
        ("postgresql://berth:p@ss:w0rd@db/registry", "postgresql://berth:********@db/registry"),
        ("postgresql://berth:@db/registry", "postgresql://berth:********@db/registry"),
        ("postgresql://berth@db/registry", "postgresql://berth@db/registry"),
        (
            "postgresql://berth@db/registry?sslmode=require&password=s3cret",
            "postgresql://berth@db/registry?sslmode=require&password=********",
        ),
        ("sqlite:////data/registry.db", "sqlite:////data/registry.db"),
    ],
)
def test_redacted_hides_database_passwords(settings: Settings, url: str, shown: str) -> None:
    redacted = settings.model_copy(update={"database_url": url}).redacted()
    assert redacted["database_url"] == shown
    assert "s3cret" not in repr(redacted)
    assert "w0rd" not in repr(redacted)


def test_redacted_hides_artifact_store_passwords(settings: Settings) -> None:
    url = "s3://AKIAKEY:topsecret@bucket/prefix"
    redacted = settings.model_copy(update={"artifact_url": url}).redacted()
    assert redacted["artifact_url"] == "s3://AKIAKEY:********@bucket/prefix"
    assert "topsecret" not in repr(redacted)


def test_field_docs_has_a_line_for_every_field() -> None:
    docs = field_docs()
    assert list(docs) == list(Settings.model_fields)
    for name, line in docs.items():
        assert line, f"{name} has no docstring"
        assert "\n" not in line, name
    assert "413" in docs["max_batch_rows"]
    assert "registry.db" in docs["database_url"]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BERTH_MAX_BATCH_ROWS", "-5"),
        ("BERTH_MAX_BATCH_ROWS", "0"),
        ("BERTH_MAX_BODY_BYTES", "-1"),
        ("BERTH_MAX_CONCURRENT_REQUESTS", "0"),
        ("BERTH_REQUEST_TIMEOUT_SECONDS", "-1"),
        ("BERTH_BODY_TIMEOUT_SECONDS", "0"),
        ("BERTH_REFRESH_SECONDS", "0"),
        ("BERTH_WORKERS", "-3"),
        ("BERTH_PORT", "0"),
        ("BERTH_PORT", "99999"),
        ("BERTH_DECODE_PROCESS_BYTES", "-1"),
        ("BERTH_COMPRESS_MIN_BYTES", "-1"),
        ("BERTH_JWT_LEEWAY_SECONDS", "-1"),
    ],
)
def test_limits_out_of_range_are_refused_by_name(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(InvalidInput, match=variable):
        load_settings()
