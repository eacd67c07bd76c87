"""The GitLab CI file `berth ci init --provider gitlab` writes."""

from __future__ import annotations

from berth.ci.options import InitOptions

PATH = ".gitlab-ci.yml"

_APPROVAL = """\
  # Manual approval: someone allowed to deploy to "@ENVIRONMENT@" starts this job (protect the
  # environment to choose who); the pipeline waits for it.
  when: manual
  allow_failure: false
"""

_PIPELINE = """\
# Berth pipeline of this model repository, written by `berth ci init --provider gitlab`.
#
#   test -> gates -> ship (register, push-image) -> staging -> canary
#
#   test        the repository's tests (tests/)
#   gates       `berth validate` of the candidate on held-out rows, and no regression against
#               NAME@production; nothing is registered unless every gate passes
#   register    register the candidate (tags git_sha and run_url), write the image's bundle
#   push-image  build and push the image to this project's container registry
#   staging     move the staging alias to the candidate, smoke and Open Inference Protocol
#               checks against staging
#   canary      a canary rollout on the production endpoint; `berth rollout wait` passes only
#               when the candidate is promoted; on failure the canary is rolled back
#
# Thresholds and names live in berth-ci.toml (`berth ci gates` shows the gates' command).
# CI/CD variables, by name only (Settings -> CI/CD -> Variables): BERTH_SERVER, the Berth
# server's URL, and BERTH_API_KEY (masked, protected), a key with the admin scope (`berth keys
# create ci --scope admin`). The pipeline holds no database credentials: every `berth` command
# goes through the server's API.
#
# Dry-run it on your machine against a server: `berth ci run --provider gitlab`.

workflow:
  rules:
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
    - if: $CI_PIPELINE_SOURCE == "web"

stages: [test, gates, ship, staging, canary]

variables:
  BERTH_CI_CONFIG: @CONFIG@
  # What pip installs: a version, a wheel or a git URL.
  BERTH_INSTALL: "@INSTALL@"
  PIP_DISABLE_PIP_VERSION_CHECK: "1"

.install: &install
  - pip install "$BERTH_INSTALL"
  - if [ -f requirements.txt ]; then pip install -r requirements.txt; fi

.configure: &configure
  - |
    if [ -z "$BERTH_SERVER" ] || [ -z "$BERTH_API_KEY" ]; then
      echo "set the BERTH_SERVER and BERTH_API_KEY CI/CD variables (Settings -> CI/CD -> Variables)"
      exit 1
    fi
  - eval "$(berth ci env)"

default:
  image: python:@PYTHON@-slim
  before_script:
    - *install
    - *configure

test:
  stage: test
  before_script: *install
  script:
    - |
      if [ -d tests ]; then
        pip install pytest
        python -m pytest -q tests
      else
        echo "no tests/ folder: nothing to run"
      fi

gates:
  stage: gates
  script:
    # `berth validate CANDIDATE --data ... --no-regression-vs NAME@production` with the
    # thresholds of berth-ci.toml [gates]: the log shows the whole command.
    - berth ci validate

register:
  stage: ship
  script:
    - >-
      berth models register "$BERTH_CI_MODEL" "$BERTH_CI_CANDIDATE"
      --sample "$BERTH_CI_SAMPLE"
      --tag "git_sha=$CI_COMMIT_SHA"
      --tag "run_url=$CI_PIPELINE_URL"
    - version=$(berth ci version --tag "git_sha=$CI_COMMIT_SHA")
    - berth build "$BERTH_CI_MODEL:$version" --out build/berth --image "$BERTH_CI_IMAGE:$version" --force
    - echo "BERTH_CI_VERSION=$version" > berth-ci.env
    - echo "BERTH_CI_IMAGE_TAG=$BERTH_CI_IMAGE:$version" >> berth-ci.env
  artifacts:
    paths: [build/berth]
    reports:
      dotenv: berth-ci.env

push-image:
  stage: ship
  needs: [register]
  image: docker:27
  services: [docker:27-dind]
  variables:
    DOCKER_TLS_CERTDIR: "/certs"
  before_script: []
  script:
    - echo "$CI_REGISTRY_PASSWORD" | docker login --username "$CI_REGISTRY_USER" --password-stdin "$CI_REGISTRY"
    - docker build --tag "$BERTH_CI_IMAGE_TAG" build/berth
    - docker push "$BERTH_CI_IMAGE_TAG"

staging:
  stage: staging
  needs: [register, push-image]
  script:
    - berth models alias "$BERTH_CI_MODEL" "$BERTH_CI_STAGING" "$BERTH_CI_VERSION"
    - berth ci smoke

canary:
  stage: canary
  needs: [register, staging]
  environment:
    name: @ENVIRONMENT@
@APPROVAL@  # The canary's steps and intervals bound this; keep it above [canary] wait_timeout.
  timeout: 2h
  script:
    - rm -f .berth-rollout-started
    - >-
      berth rollout start "$BERTH_CI_ENDPOINT" --to "$BERTH_CI_MODEL:$BERTH_CI_VERSION"
      --steps "$BERTH_CI_STEPS" --interval "$BERTH_CI_INTERVAL"
      --max-error-rate "$BERTH_CI_MAX_ERROR_RATE" --min-requests "$BERTH_CI_MIN_REQUESTS"
    - touch .berth-rollout-started
    - berth rollout wait "$BERTH_CI_ENDPOINT" --timeout "$BERTH_CI_WAIT_TIMEOUT"
  after_script:
    # after_script runs in a shell of its own, whatever the script did: roll back when the
    # job failed after this run started a canary (the controller may have done it already).
    - |
      if [ "$CI_JOB_STATUS" = failed ] && [ -f .berth-rollout-started ]; then
        eval "$(berth ci env)"
        berth rollout rollback "$BERTH_CI_ENDPOINT" --reason "pipeline failed: $CI_PIPELINE_URL" \\
          || echo "no rollout in progress on $BERTH_CI_ENDPOINT"
        berth rollout status "$BERTH_CI_ENDPOINT"
      fi
"""


def render(options: InitOptions) -> str:
    approval = _APPROVAL if options.approval else ""
    return (
        _PIPELINE.replace("@APPROVAL@", approval)
        .replace("@ENVIRONMENT@", options.environment)
        .replace("@PYTHON@", options.python)
        .replace("@INSTALL@", options.install)
        .replace("@CONFIG@", options.config)
    )
