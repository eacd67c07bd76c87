"""`berth ci run` on small pipelines: order, variables, secrets, stand-ins, failure handling.

No server here: tests/test_ci_pipeline.py runs the generated pipelines against one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import Run

WORKFLOW = """\
name: t
on: push
env:
  GREETING: hello
  TOKEN: ${{ secrets.MY_TOKEN }}
  SHA: ${{ github.sha }}
jobs:
  last:
    needs: [middle]
    runs-on: ubuntu-latest
    steps:
      - run: echo "last ran"
  first:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v5
      - uses: someone/marketplace-thing@v1
      - name: Hand a variable on
        run: |
          echo "HANDED=from-step-one" >> "$GITHUB_ENV"
          echo "$GREETING at $SHA"
      - name: Read it
        run: |
          echo "handed: $HANDED"
          echo "token: $TOKEN"
      - name: External tools
        run: |
          mkdir -p bundle && touch bundle/Dockerfile
          pip install something
          docker build --tag img:1 bundle
          docker push img:1
          echo "berth is $(command -v berth)"
  middle:
    needs: first
    runs-on: ubuntu-latest
    steps:
      - name: Fails
        run: exit 3
      - name: Never
        run: echo "never printed"
      - name: Cleanup
        if: failure()
        run: echo "cleanup ran after the failure"
      - name: Always
        if: always()
        run: echo "always ran"
"""


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_github_jobs_run_in_order_and_a_failure_runs_the_failure_steps(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "berth.yml").write_text(WORKFLOW)
    monkeypatch.setenv("MY_TOKEN", "s3cret-token-value")
    done = run("ci", "run", "--provider", "github", "--env", "GITHUB_SHA=abc123")
    assert done.code == 1, done.err
    out = done.out
    assert "jobs: first -> middle -> last" in out
    assert "hello at abc123" in out
    assert "handed: from-step-one" in out
    # Secrets reach the steps and are masked in the log.
    assert "token: ***" in out
    assert "s3cret-token-value" not in out
    assert "actions/checkout@v5: stand-in: the steps run in the working tree as it is" in out
    assert "someone/marketplace-thing@v1: not run: an action of the marketplace" in out
    assert "[stand-in] pip install something: nothing installed" in out
    assert "[stand-in] docker build: bundle/Dockerfile is there; no image is built" in out
    assert "[stand-in] docker push img:1: nothing leaves this machine" in out
    assert re.search(r"berth is /\S+/bin/berth", out)
    assert "never printed" not in out
    assert "cleanup ran after the failure" in out
    assert "always ran" in out
    assert "-- step 2/4: Never: skipped (runs only on success)" in out
    assert "== last: skipped (needs middle)" in out
    assert "last ran" not in out
    # Every step that ran has its time; the summary has each job's.
    assert len(re.findall(r"   ok \(\d+\.\d s\)", out)) == 5
    assert "   failed: exit 3 (" in out
    assert re.search(r"  middle +failure +\d+\.\d s  step 1 \(Fails\) failed: exit 3", out)
    assert re.search(r"  last +skipped +- +needs middle", out)
    assert _lines(out)[-1].startswith("pipeline failed in ")


def test_an_expression_the_runner_cannot_evaluate_is_refused(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "w.yml"
    path.write_text(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n"
        "      - run: echo ${{ github.event.head_commit.message }}\n"
    )
    done = run("ci", "run", "--provider", "github", "--file", str(path))
    assert done.code == 1
    assert done.err.startswith("error: job 'a', step 1 (echo ${{ github.event.head_commit")
    assert "the local runner cannot evaluate ${{ github.event.head_commit.message }}" in done.err
    assert len(done.err.strip().splitlines()) == 1


GITLAB = """\
stages: [one, two, three]
variables:
  BASE: base
  DERIVED: "$BASE-derived"
.setup: &setup
  - export SHARED=from-before-script
default:
  image: python:3.12-slim
  before_script:
    - *setup
build:
  stage: one
  script:
    - echo "derived is $DERIVED, shared is $SHARED, commit $CI_COMMIT_SHA"
    - echo "VERSION=7" > out.env
  artifacts:
    reports:
      dotenv: out.env
check:
  stage: two
  script:
    - echo "version from build is $VERSION"
    - |
      if [ "$VERSION" = 7 ]; then
        false
      fi
    - echo "not reached"
  after_script:
    - echo "after_script sees $CI_JOB_STATUS"
cleanup:
  stage: three
  when: on_failure
  script:
    - echo "on_failure job ran"
deploy:
  stage: three
  when: manual
  script:
    - echo "deployed"
"""


def test_gitlab_jobs_share_a_shell_hand_on_dotenv_and_run_after_script(
    run: Run, tmp_path: Path
) -> None:
    (tmp_path / ".gitlab-ci.yml").write_text(GITLAB)
    done = run("ci", "run", "--no-approve", "--env", "CI_COMMIT_SHA=c0ffee")
    assert done.code == 1, done.err
    out = done.out
    assert "jobs: build -> check -> cleanup -> deploy" in out
    assert "== check: stage two\n" in out
    assert "   | version from build is 7\n" in out
    assert "derived is base-derived, shared is from-before-script, commit c0ffee" in out
    assert "note: image python:3.12-slim: the jobs run on this machine instead" in out
    assert "version from build is 7" in out
    assert "not reached" not in out
    assert '-- $ if [ "$VERSION" = 7 ]; then ...\n   failed: exit 1 (' in out
    assert "after_script sees failed" in out
    assert "on_failure job ran" in out
    assert "== deploy: skipped (needs check)" in out
    assert re.search(r"  check +failure .*`if \[ \"\$VERSION\" = 7 \]; then` failed: exit 1", out)


def test_a_manual_job_waits_for_approval(run: Run, tmp_path: Path) -> None:
    (tmp_path / ".gitlab-ci.yml").write_text(
        "stages: [a, b]\nfirst:\n  stage: a\n  script: [echo first]\n"
        "gate:\n  stage: b\n  when: manual\n  script: [echo approved and ran]\n"
    )
    stopped = run("ci", "run", "--no-approve")
    assert stopped.code == 0, stopped.err
    assert "approval: GitLab manual job 'gate' (someone starts it): not given" in stopped.out
    assert "approved and ran" not in stopped.out
    approved = run("ci", "run")
    assert approved.code == 0, approved.err
    assert "approval: GitLab manual job 'gate' (someone starts it): given here" in approved.out
    assert "approved and ran" in approved.out
    assert approved.out.splitlines()[-1].startswith("pipeline passed in ")


def test_a_step_over_its_time_limit_is_stopped(run: Run, tmp_path: Path) -> None:
    path = tmp_path / "w.yml"
    path.write_text(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n"
        "      - run: sleep 30\n        timeout-minutes: 0.02\n"
    )
    done = run("ci", "run", "--provider", "github", "--file", str(path))
    assert done.code == 1
    assert "timed out after 0.02 min" in done.out


def test_which_pipeline_to_run_is_asked_when_unclear(run: Run, tmp_path: Path) -> None:
    done = run("ci", "run")
    assert done.code == 1
    assert "has neither .github/workflows/berth.yml nor .gitlab-ci.yml; give --provider" in done.err
