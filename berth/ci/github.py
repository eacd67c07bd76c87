"""The GitHub Actions workflow `berth ci init --provider github` writes."""

from __future__ import annotations

from berth.ci.options import InitOptions

PATH = ".github/workflows/berth.yml"

_APPROVAL = """\
    # Manual approval: add required reviewers to the environment "@ENVIRONMENT@" (Settings ->
    # Environments); the canary starts only once one of them approves.
    environment: @ENVIRONMENT@
"""

_SETUP = """\
      - uses: actions/checkout@v5
      - uses: actions/setup-python@v6
        with:
          python-version: "@PYTHON@"
      - name: Install Berth and the model's requirements
        run: |
          pip install "$BERTH_INSTALL"
          if [ -f requirements.txt ]; then pip install -r requirements.txt; fi
"""

_CONFIGURE = """\
      - name: Configure from berth-ci.toml
        run: |
          if [ -z "$BERTH_SERVER" ] || [ -z "$BERTH_API_KEY" ]; then
            echo "::error::add the BERTH_SERVER and BERTH_API_KEY secrets (Settings -> Secrets and variables -> Actions)"
            exit 1
          fi
          berth ci env --format github >> "$GITHUB_ENV"
"""

_WORKFLOW = """\
# Berth pipeline of this model repository, written by `berth ci init --provider github`.
#
#   test -> gates -> ship -> canary
#
#   test    the repository's tests (tests/)
#   gates   `berth validate` of the candidate on held-out rows, and no regression against
#           NAME@production; nothing is registered unless every gate passes
#   ship    register the candidate (tags git_sha and run_url), build and push its image, move
#           the staging alias to it, smoke and Open Inference Protocol checks against staging
#   canary  a canary rollout on the production endpoint; `berth rollout wait` passes only when
#           the candidate is promoted; on failure the canary is rolled back and the run fails
#
# Thresholds and names live in berth-ci.toml (`berth ci gates` shows the gates' command).
# Secrets, by name only (Settings -> Secrets and variables -> Actions): BERTH_SERVER, the Berth
# server's URL, and BERTH_API_KEY, a key with the admin scope (`berth keys create ci --scope
# admin`). The pipeline holds no database credentials: every `berth` command goes through the
# server's API.
#
# Dry-run it on your machine against a server: `berth ci run --provider github`.
name: berth

on:
  push:
    branches: [main]
  workflow_dispatch:

# One run at a time moves staging and production.
concurrency:
  group: berth-deploy
  cancel-in-progress: false

permissions:
  contents: read
  packages: write

env:
  BERTH_SERVER: ${{ secrets.BERTH_SERVER }}
  BERTH_API_KEY: ${{ secrets.BERTH_API_KEY }}
  BERTH_CI_CONFIG: @CONFIG@
  # What pip installs: a version, a wheel or a git URL.
  BERTH_INSTALL: "@INSTALL@"

defaults:
  run:
    shell: bash

jobs:
  test:
    name: Repository tests
    runs-on: ubuntu-latest
    timeout-minutes: 30
    steps:
@SETUP@      - name: Run the tests
        run: |
          if [ -d tests ]; then
            pip install pytest
            python -m pytest -q tests
          else
            echo "no tests/ folder: nothing to run"
          fi

  gates:
    name: Validation gates
    needs: test
    runs-on: ubuntu-latest
    timeout-minutes: 30
    steps:
@SETUP@@CONFIGURE@      - name: Gates on held-out rows, no regression against production
        # `berth validate CANDIDATE --data ... --no-regression-vs NAME@production` with the
        # thresholds of berth-ci.toml [gates]: the log shows the whole command.
        run: berth ci validate

  ship:
    name: Register, build and stage
    needs: gates
    runs-on: ubuntu-latest
    timeout-minutes: 30
    steps:
@SETUP@@CONFIGURE@      - name: Register the candidate
        run: |
          berth models register "$BERTH_CI_MODEL" "$BERTH_CI_CANDIDATE" \\
            --sample "$BERTH_CI_SAMPLE" \\
            --tag "git_sha=$GITHUB_SHA" \\
            --tag "run_url=$GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID"
          version=$(berth ci version --tag "git_sha=$GITHUB_SHA")
          echo "BERTH_CI_VERSION=$version" >> "$GITHUB_ENV"
      - name: Build the image's bundle
        run: |
          berth build "$BERTH_CI_MODEL:$BERTH_CI_VERSION" --out build/berth \\
            --image "$BERTH_CI_IMAGE:$BERTH_CI_VERSION" --force
      # For a registry other than ghcr.io, change these three (secrets by name).
      - name: Log in to the image registry
        uses: docker/login-action@v4
        with:
          registry: ghcr.io
          username: ${{ github.actor }}
          password: ${{ secrets.GITHUB_TOKEN }}
      - name: Build and push the image
        run: |
          docker build --tag "$BERTH_CI_IMAGE:$BERTH_CI_VERSION" build/berth
          docker push "$BERTH_CI_IMAGE:$BERTH_CI_VERSION"
      - name: Move staging to the candidate
        run: berth models alias "$BERTH_CI_MODEL" "$BERTH_CI_STAGING" "$BERTH_CI_VERSION"
      - name: Smoke and Open Inference Protocol checks against staging
        run: berth ci smoke

  canary:
    name: Canary on production
    needs: ship
    runs-on: ubuntu-latest
@APPROVAL@    # The canary's steps and intervals bound this; keep it above [canary] wait_timeout.
    timeout-minutes: 120
    steps:
@SETUP@@CONFIGURE@      - name: Start the canary
        run: |
          version=$(berth ci version --tag "git_sha=$GITHUB_SHA")
          berth rollout start "$BERTH_CI_ENDPOINT" --to "$BERTH_CI_MODEL:$version" \\
            --steps "$BERTH_CI_STEPS" --interval "$BERTH_CI_INTERVAL" \\
            --max-error-rate "$BERTH_CI_MAX_ERROR_RATE" --min-requests "$BERTH_CI_MIN_REQUESTS"
          echo "BERTH_CI_ROLLOUT_STARTED=1" >> "$GITHUB_ENV"
      - name: Wait until it is promoted
        run: berth rollout wait "$BERTH_CI_ENDPOINT" --timeout "$BERTH_CI_WAIT_TIMEOUT"
      - name: Roll back the canary
        if: failure()
        run: |
          if [ -z "${BERTH_CI_ROLLOUT_STARTED:-}" ]; then
            echo "this run started no canary: nothing to roll back"
            exit 0
          fi
          # The controller may have rolled it back already: then nothing is in progress.
          berth rollout rollback "$BERTH_CI_ENDPOINT" \\
            --reason "pipeline failed: $GITHUB_SERVER_URL/$GITHUB_REPOSITORY/actions/runs/$GITHUB_RUN_ID" \\
            || echo "no rollout in progress on $BERTH_CI_ENDPOINT"
          berth rollout status "$BERTH_CI_ENDPOINT"
"""


def render(options: InitOptions) -> str:
    approval = _APPROVAL.replace("@ENVIRONMENT@", options.environment) if options.approval else ""
    text = (
        _WORKFLOW.replace("@SETUP@", _SETUP)
        .replace("@CONFIGURE@", _CONFIGURE)
        .replace("@APPROVAL@", approval)
    )
    return (
        text.replace("@PYTHON@", options.python)
        .replace("@INSTALL@", options.install)
        .replace("@CONFIG@", options.config)
    )
