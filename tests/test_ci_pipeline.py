"""The generated pipeline really runs: `berth ci run` against a real `berth serve`.

One server holds each scenario's model at version 1 behind a production endpoint of the same
name (`berth.ci.scenarios`). Each scenario writes a model repository with `berth ci init`, then
runs its pipeline on this machine while clients call the endpoint; the pipeline reaches the
server only through the remote CLI (BERTH_SERVER, BERTH_API_KEY; its BERTH_DATABASE_URL is
unusable). Each prints its wall time.

1. a good candidate is registered, staged, canaried and promoted;
2. a candidate under the accuracy threshold stops at the gates: nothing is registered;
3. a candidate failing a fifth of live requests is rolled back by the canary, the pipeline
   fails, and clients of the stable route see no error.

The first runs the GitHub workflow; the second the GitLab file; the third both (GitHub's
`if: failure()` step and GitLab's after_script each roll back).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.ci import scenarios
from berth.ci.scenarios import Ops

pytestmark = pytest.mark.server

MODELS = ("promoted", "underfit", "flaky-github", "flaky-gitlab")


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    with scenarios.ops_server(tmp_path_factory.mktemp("ops"), MODELS) as server:
        yield server


def _run(
    ops: Ops, tmp_path: Path, name: str, candidate: scenarios.Candidate, provider: str
) -> tuple[scenarios.PipelineRun, str]:
    repo = scenarios.write_repo(tmp_path / name, name, candidate, provider)
    commit = uuid.uuid4().hex
    result = scenarios.run_pipeline(ops, repo, name, provider, commit)
    print(f"\nscenario {name} ({provider}): exit {result.code} in {result.seconds:.1f} s")
    print(result.output)
    return result, commit


def test_a_good_candidate_is_promoted(ops: Ops, tmp_path: Path) -> None:
    result, commit = _run(ops, tmp_path, "promoted", scenarios.GOOD, "github")
    assert result.code == 0, result.output
    after = scenarios.outcome(ops, "promoted")
    assert [v.number for v in after.versions] == [1, 2]
    version = after.versions[-1]
    assert version.tags["git_sha"] == commit
    assert re.fullmatch(r"local:/local/promoted/actions/runs/\d+", version.tags["run_url"])
    assert after.aliases["staging"] == 2
    assert after.rollout is not None
    assert after.rollout.status == "promoted"
    assert after.rollout.to_ref == "promoted:2"
    assert after.serving == ("stable=promoted:2@100",)
    assert "PASS promoted@staging serves version 2" in result.output  # smoke + OIP
    assert re.search(r"canary +success", result.output)
    assert result.stable == {200: sum(result.stable.values())}
    assert result.free == {200: sum(result.free.values())}


def test_a_candidate_under_the_accuracy_threshold_is_not_registered(
    ops: Ops, tmp_path: Path
) -> None:
    result, _ = _run(ops, tmp_path, "underfit", scenarios.UNDERFIT, "gitlab")
    assert result.code == 1, result.output
    assert (
        "berth validate ./model --data data/holdout.csv --sample data/sample.npy --target label"
        in (result.output)
    )
    assert re.search(r"FAIL \d+ of \d+ checks failed: accuracy \(0", result.output)
    assert re.search(r"gates +failure", result.output)
    assert re.search(r"register +skipped", result.output)
    after = scenarios.outcome(ops, "underfit")
    assert [v.number for v in after.versions] == [1]
    assert "staging" not in after.aliases
    assert after.rollout is None
    assert after.serving == ("stable=underfit:1@100",)


@pytest.mark.parametrize("provider", ["github", "gitlab"])
def test_a_candidate_failing_live_requests_is_rolled_back(
    ops: Ops, tmp_path: Path, provider: str
) -> None:
    name = f"flaky-{provider}"
    result, _ = _run(ops, tmp_path, name, scenarios.FLAKY, provider)
    assert result.code == 1, result.output
    after = scenarios.outcome(ops, name)
    assert [v.number for v in after.versions] == [1, 2]  # it passed the gates
    assert after.rollout is not None
    assert after.rollout.status == "rolled_back"
    assert "canary failed" in (after.rollout.reason or "")
    assert after.serving == (f"stable={name}:1@100",)
    assert re.search(r"canary +failure", result.output)
    rollback = "Roll back the canary" if provider == "github" else "after_script (job failed)"
    assert rollback in result.output
    assert re.search(rf"rollout \d+ of {name}: canary, rolled back", result.output)
    # Clients of the stable route saw no error; the others saw the candidate's.
    assert result.stable == {200: sum(result.stable.values())}
    assert sum(result.stable.values()) > 50
    assert result.free[500] > 0
