"""`berth ci init`: write berth-ci.toml and the provider's pipeline file into a repository."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from berth.ci import config, github, gitlab
from berth.ci.options import PROVIDERS, InitOptions
from berth.errors import Conflict, InvalidInput

_CONFIG = """\
# Berth CI/CD: what the pipeline checks and where it ships the model (see `berth ci --help`).
# Paths are relative to this file's folder. `berth ci gates` shows the validation command,
# `berth ci env` the names the other steps use.

[model]
name = @MODEL@
# The model file, folder or archive this commit ships (kept here or built by an earlier step).
candidate = @CANDIDATE@
# Rows the version's signature is inferred from; the smoke checks send them to staging.
sample = @SAMPLE@

# `berth validate` on held-out rows: the candidate is registered only if every gate passes.
[gates]
data = @DATA@
@TARGET@min_accuracy = 0.8
# min_auc = 0.85
# max_rmse = 1.0                 # regressors
# max_latency_ms = 50            # p99 of one-row predictions, in process
no_nan = true
# output_range = [0, 1]
# No metric worse than NAME@production on the same rows (leave false until production exists).
no_regression = false
regression_tolerance = 0.0

# The alias moved to the candidate before the canary; smoke checks run against it.
[staging]
alias = "staging"

# `berth rollout start ENDPOINT --to NAME:VERSION ...` on the production endpoint, then
# `berth rollout wait`: promoted at the last step, or rolled back.
[canary]
endpoint = @ENDPOINT@
steps = [10, 50, 100]
interval = "5m"
max_error_rate = 0.01
min_requests = 100
wait_timeout = "30m"

# Where the image is pushed, tagged with the version; empty: the provider's registry.
[image]
repository = ""
"""


@dataclass(frozen=True)
class Written:
    path: Path
    kept: bool
    """True: the file was there already and was left as it was."""


def init(directory: Path, options: InitOptions, force: bool = False) -> list[Written]:
    """Write berth-ci.toml (kept if present) and the pipeline file (refused if present unless
    `force`); the written configuration is checked as `berth ci` will read it."""
    if options.provider not in PROVIDERS:
        raise InvalidInput(
            f"provider '{options.provider}' is not known; use {' or '.join(PROVIDERS)}"
        )
    if not directory.is_dir():
        raise InvalidInput(f"{directory} is not a folder; give the model repository with --dir")
    target = directory / pipeline_path(options.provider)
    if target.exists() and not force:
        raise Conflict(f"{target} exists; add --force to replace it")
    written = [_write_config(directory / options.config, options)]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(pipeline_text(options), encoding="utf-8")
    return [*written, Written(target, kept=False)]


def pipeline_path(provider: str) -> str:
    return github.PATH if provider == "github" else gitlab.PATH


def pipeline_text(options: InitOptions) -> str:
    return github.render(options) if options.provider == "github" else gitlab.render(options)


def config_text(options: InitOptions) -> str:
    target = f"target = {_toml(options.target)}\n" if options.target else '# target = "label"\n'
    values = {
        "@MODEL@": options.model,
        "@CANDIDATE@": options.candidate,
        "@SAMPLE@": options.sample,
        "@DATA@": options.data,
        "@ENDPOINT@": options.endpoint or options.model,
    }
    text = _CONFIG.replace("@TARGET@", target)
    for marker, value in values.items():
        text = text.replace(marker, _toml(value))
    return text


def _write_config(path: Path, options: InitOptions) -> Written:
    if path.exists():
        config.load(path)  # a broken file is said now, not in the first pipeline
        return Written(path, kept=True)
    text = config_text(options)
    config.parse(text, str(path))
    path.write_text(text, encoding="utf-8")
    return Written(path, kept=False)


def _toml(value: str) -> str:
    # A JSON string is a TOML basic string: the same escapes.
    return json.dumps(value, ensure_ascii=False)
