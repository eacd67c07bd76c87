"""`berth ci init`: berth-ci.toml and the pipelines it writes, checked offline.

The GitHub workflow and the GitLab CI file are validated against the JSON schemas that
check-jsonschema vendors (`--builtin-schema vendor.github-workflows`, `vendor.gitlab-ci`): no
schema is downloaded, and the subprocess runs with its proxies pointed at a closed port, so a
download would fail the check. A deliberately broken file fails the same check.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from berth.ci.config import parse
from berth.ci.options import InitOptions
from berth.ci.runner import read_pipeline
from berth.ci.scaffold import config_text, pipeline_text
from tests.conftest import Run

SCHEMAS = {"github": "vendor.github-workflows", "gitlab": "vendor.gitlab-ci"}
FILES = {"github": ".github/workflows/berth.yml", "gitlab": ".gitlab-ci.yml"}


def check_schema(provider: str, path: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema with its vendored schema, unable to reach any network."""
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "NO_PROXY": ""}
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", SCHEMAS[provider]]
    if provider == "gitlab":
        command += ["--data-transform", "gitlab-ci"]  # GitLab's !reference tags
    return subprocess.run(
        [*command, str(path)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


@pytest.mark.parametrize("provider", ["github", "gitlab"])
@pytest.mark.parametrize("approval", [False, True])
def test_init_writes_a_pipeline_that_passes_the_provider_schema(
    run: Run, tmp_path: Path, provider: str, approval: bool
) -> None:
    repo = tmp_path / "churn-model"
    repo.mkdir()
    flags = ["--approval"] if approval else []
    done = run(
        "ci", "init", "--provider", provider, "--dir", str(repo), "--target", "churned", *flags
    )
    assert done.code == 0, done.err
    assert f"Wrote {repo / 'berth-ci.toml'}" in done.out
    pipeline = repo / FILES[provider]
    assert f"Wrote {pipeline}" in done.out
    checked = check_schema(provider, pipeline)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "validation done" in checked.stdout
    text = pipeline.read_text()
    # Secrets by name only, and no way to the database.
    assert "DATABASE_URL" not in text
    assert "BERTH_HOME" not in text
    if provider == "github":
        assert "BERTH_API_KEY: ${{ secrets.BERTH_API_KEY }}" in text
        assert "BERTH_SERVER: ${{ secrets.BERTH_SERVER }}" in text
    else:
        assert "${{" not in text
    # The model's name defaults to the folder's, the endpoint to the model's.
    config = parse((repo / "berth-ci.toml").read_text())
    assert config.model.name == "churn-model"
    assert config.endpoint == "churn-model"
    assert config.gates.target == "churned"
    document = yaml.safe_load(text)
    jobs = document["jobs"] if provider == "github" else document
    canary = jobs["canary"]
    if provider == "github":
        assert ("environment" in canary) is approval
        assert canary["steps"][-1]["if"] == "failure()"
    else:
        assert (canary.get("when") == "manual") is approval
        assert canary.get("allow_failure") is (False if approval else None)
        assert "berth rollout rollback" in canary["after_script"][0]


@pytest.mark.parametrize(
    ("provider", "old", "new", "complaint"),
    [
        (
            "github",
            "    runs-on: ubuntu-latest",
            "    runs_on: ubuntu-latest",
            "'runs-on' is a required property",
        ),
        (
            "github",
            "        run: berth ci validate",
            "        script: berth ci validate",
            "is not valid under any",
        ),
        ("gitlab", "  script:", "  scripts:", "'scripts' was unexpected"),
        ("gitlab", "    paths: [build/berth]", "    path: [build/berth]", "'path' was unexpected"),
    ],
)
def test_a_broken_pipeline_fails_the_schema_check(
    tmp_path: Path, provider: str, old: str, new: str, complaint: str
) -> None:
    text = pipeline_text(InitOptions(provider=provider, model="churn", approval=True))
    assert old in text
    path = tmp_path / "broken.yml"
    path.write_text(text.replace(old, new, 1))
    checked = check_schema(provider, path)
    assert checked.returncode == 1, checked.stdout
    assert complaint in checked.stdout


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_the_runner_reads_the_generated_pipeline_in_dependency_order(
    tmp_path: Path, provider: str
) -> None:
    path = tmp_path / "pipeline.yml"
    path.write_text(pipeline_text(InitOptions(provider=provider, model="churn", approval=True)))
    environ = {"BERTH_SERVER": "http://127.0.0.1:1", "BERTH_API_KEY": "k"}
    pipeline = read_pipeline(provider, path, tmp_path, "1", environ)
    order = [job.id for job in pipeline.jobs]
    if provider == "github":
        assert order == ["test", "gates", "ship", "canary"]
        assert pipeline.env["BERTH_API_KEY"] == "k"
    else:
        assert order == ["test", "gates", "register", "push-image", "staging", "canary"]
        assert pipeline.jobs[-1].after  # the rollback
    canary = pipeline.jobs[-1]
    assert canary.approval is not None


def test_init_keeps_berth_ci_toml_and_refuses_to_replace_a_pipeline(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / "berth-ci.toml").write_text(
        config_text(InitOptions(provider="github", model="kept", target="y"))
    )
    first = run("ci", "init", "--provider", "github", "--model", "other")
    assert first.code == 0, first.err
    assert "Kept berth-ci.toml" in first.out
    assert 'name = "kept"' in (tmp_path / "berth-ci.toml").read_text()
    again = run("ci", "init", "--provider", "github")
    assert again.code == 1
    assert again.err.strip().startswith("error: .github/workflows/berth.yml exists; add --force")
    forced = run("ci", "init", "--provider", "github", "--force")
    assert forced.code == 0, forced.err


def test_init_refuses_a_bad_model_name_and_provider(run: Run, tmp_path: Path) -> None:
    bad = run("ci", "init", "--provider", "github", "--model", "no spaces")
    assert bad.code == 1
    assert "model name 'no spaces' is not valid" in bad.err
    assert not (tmp_path / "berth-ci.toml").exists()
    unknown = run("ci", "init", "--provider", "jenkins")
    assert unknown.code == 1
    assert "provider 'jenkins' is not known; use github or gitlab" in unknown.err


CONFIG = """
[model]
name = "churn"
candidate = "model/churn.skops"
sample = "data/sample.csv"

[gates]
data = "data/holdout.csv"
target = "churned"
min_accuracy = 0.8
min_auc = 0.85
max_latency_ms = 20
no_nan = true
output_range = [0, 1]
no_regression = true
regression_tolerance = 0.01

[canary]
endpoint = "churn-api"
steps = [5, 50, 100]
interval = "2m"
max_error_rate = 0.02
min_requests = 50
"""


def test_gates_print_the_validate_command_and_env_the_names(run: Run, tmp_path: Path) -> None:
    (tmp_path / "berth-ci.toml").write_text(CONFIG)
    gates = run("ci", "gates")
    assert gates.code == 0, gates.err
    assert gates.out.strip() == (
        "berth validate model/churn.skops --data data/holdout.csv --sample data/sample.csv "
        "--target churned "
        "--min-accuracy 0.8 --min-auc 0.85 --max-latency-ms 20 --no-nan --output-range 0,1 "
        "--no-regression-vs churn@production --regression-tolerance 0.01"
    )
    shell = run("ci", "env")
    assert shell.code == 0, shell.err
    assert "export BERTH_CI_ENDPOINT=churn-api\n" in shell.out
    assert "export BERTH_CI_STEPS=5,50,100\n" in shell.out
    assert "export BERTH_CI_CANDIDATE=model/churn.skops\n" in shell.out
    assert "export BERTH_CI_STAGING=staging\n" in shell.out
    github = run("ci", "env", "--format", "github")
    assert "BERTH_CI_MAX_ERROR_RATE=0.02\n" in github.out
    assert "BERTH_CI_MIN_REQUESTS=50\n" in github.out
    assert "BERTH_CI_WAIT_TIMEOUT=30m\n" in github.out


def test_paths_are_relative_to_the_configuration_file(run: Run, tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "ci.toml").write_text(CONFIG)
    done = run("ci", "gates", "--config", "repo/ci.toml")
    assert done.code == 0, done.err
    assert done.out.startswith("berth validate repo/model/churn.skops --data repo/data/holdout.csv")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("min_accuracy = 0.8", "min_accuracy = 1.5"),
            "'gates.min_accuracy' must be at most 1.0, got 1.5",
        ),
        (
            ("min_accuracy = 0.8", "min_acuracy = 0.8"),
            "'gates': unknown field min_acuracy; known fields:",
        ),
        (("[canary]", "[canary]\nfoo = 1"), "'canary': unknown field foo"),
        (
            ("steps = [5, 50, 100]", "steps = [50, 5, 100]"),
            "'canary' steps must be rising percentages above 0",
        ),
        (("steps = [5, 50, 100]", "steps = [5, 50]"), "'canary' steps must end at 100"),
        (('interval = "2m"', 'interval = "soon"'), "'soon' is not a duration"),
        (
            ("max_error_rate = 0.02", 'max_error_rate = "low"'),
            "'canary.max_error_rate' must be a number",
        ),
        (('name = "churn"', 'name = "churn model"'), "model name 'churn model' is not valid"),
        (('endpoint = "churn-api"', 'endpoint = "a/b"'), "endpoint name 'a/b' is not valid"),
        (("output_range = [0, 1]", "output_range = [1, 0]"), "output_range must be [low, high]"),
        (('data = "data/holdout.csv"', ""), "'gates' has no 'data' field"),
        (("[gates]", "[gatez]"), "unknown field gatez"),
        (
            ("min_requests = 50", 'min_requests = 50\n[staging]\nalias = "production"'),
            "alias must not be production",
        ),
        (("[model]", "[model"), "berth-ci.toml is not valid TOML"),
        (
            ('candidate = "model/churn.skops"', 'candidate = " "'),
            "'model.candidate' must not be empty",
        ),
    ],
)
def test_a_bad_configuration_is_one_line_naming_its_key(
    run: Run, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    assert change[0] in CONFIG
    (tmp_path / "berth-ci.toml").write_text(CONFIG.replace(*change))
    done = run("ci", "gates")
    assert done.code == 1
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert lines[0].startswith("error: berth-ci.toml")
    assert message in lines[0]


def test_a_configuration_without_gates_is_refused(run: Run, tmp_path: Path) -> None:
    text = CONFIG
    for line in ("min_accuracy = 0.8", "min_auc = 0.85", "max_latency_ms = 20", "no_nan = true",
                 "output_range = [0, 1]", "no_regression = true"):  # fmt: skip
        text = text.replace(line + "\n", "")
    (tmp_path / "berth-ci.toml").write_text(text)
    done = run("ci", "gates")
    assert done.code == 1
    assert "'gates' names no gate; add one, e.g. min_accuracy = 0.9" in done.err


def test_a_missing_configuration_says_how_to_write_one(run: Run) -> None:
    done = run("ci", "env")
    assert done.code == 1
    assert done.err.strip() == (
        "error: no berth-ci.toml; write one with `berth ci init --provider github` (or gitlab), "
        "or give its path with --config"
    )


@pytest.mark.parametrize("command", ["init", "gates", "validate", "env", "version", "smoke", "run"])
def test_every_ci_command_has_help_with_an_example(run: Run, command: str) -> None:
    outcome = run("ci", command, "--help")
    assert outcome.code == 0
    assert "Example" in outcome.out


def test_the_candidate_is_given_to_validate_as_a_path(run: Run, tmp_path: Path) -> None:
    # `berth validate model` would name a registered model; ./model is the folder.
    (tmp_path / "berth-ci.toml").write_text(CONFIG.replace("model/churn.skops", "model"))
    done = run("ci", "gates")
    assert done.code == 0, done.err
    assert done.out.startswith("berth validate ./model --data data/holdout.csv")


def test_the_readme_shows_the_files_init_writes(run: Run, tmp_path: Path) -> None:
    """The README's CI/CD section shows the generated files: they must be what `init` writes
    with the options its example gives, so a template change shows up there too."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    shown = {
        name: readme.split(f"<summary><code>{name}</code></summary>\n\n```", 1)[1]
        .split("\n", 1)[1]
        .split("\n```\n", 1)[0]
        for name in ("berth-ci.toml", *FILES.values())
    }
    for provider in ("github", "gitlab"):
        folder = tmp_path / provider
        folder.mkdir()
        options = ("--model", "churn", "--target", "churned", "--approval")
        written = run("ci", "init", "--provider", provider, *options, "--dir", str(folder))
        assert written.code == 0, written.err
        assert f"berth ci init --provider {provider} {' '.join(options)}" in readme
        for name in ("berth-ci.toml", FILES[provider]):
            assert (folder / name).read_text().rstrip() == shown[name], name
