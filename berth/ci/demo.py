"""`make cicd-demo`: the pipeline `berth ci init` writes, run on this machine for three candidates.

`python -m berth.ci.demo [--provider github|gitlab] [--database-url URL]` starts a Berth server
in a temporary folder (SQLite unless --database-url), writes a model repository per scenario
and runs its pipeline with `berth ci run` while clients call the production endpoint
(`berth.ci.scenarios`):

1. a good candidate: registered, staged, canaried, promoted (the pipeline passes);
2. a candidate under the accuracy threshold: stopped by the gates, nothing registered;
3. a candidate that fails a fifth of live requests: rolled back by the canary (the pipeline
   fails), while clients of the stable route see no error.

Each pipeline's log is shown as it runs, then each scenario's wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from berth.ci import scenarios
from berth.ci.options import PROVIDERS


@dataclass(frozen=True)
class Scenario:
    name: str
    candidate: scenarios.Candidate
    expected_exit: int
    what: str


SCENARIOS = (
    Scenario("promoted", scenarios.GOOD, 0, "a good candidate is promoted"),
    Scenario("underfit", scenarios.UNDERFIT, 1, "under the accuracy threshold: not registered"),
    Scenario("flaky", scenarios.FLAKY, 1, "fails 20% of live requests: rolled back"),
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m berth.ci.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--provider", choices=PROVIDERS, default="github")
    parser.add_argument("--database-url", help="The server's registry (default: SQLite).")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="berth-cicd-demo-") as folder:
        workdir = Path(folder)
        models = tuple(s.name for s in SCENARIOS)
        with scenarios.ops_server(workdir, models, args.database_url) as ops:
            print(f"Berth server at {ops.url}; each model at version 1 behind its endpoint")
            for scenario in SCENARIOS:
                print(f"\n#### scenario {scenario.name}: {scenario.what}\n")
                repo = scenarios.write_repo(
                    workdir / scenario.name, scenario.name, scenario.candidate, args.provider
                )
                run = scenarios.run_pipeline(
                    ops, repo, scenario.name, args.provider, uuid.uuid4().hex, show=print
                )
                results.append((scenario, run))
    print("\nscenario   expected  exit  wall time  stable clients      other clients")
    failed = False
    for scenario, run in results:
        ok = (run.code == 0) == (scenario.expected_exit == 0)
        failed |= not ok
        print(
            f"{scenario.name:<10} {scenario.expected_exit:>8}  {run.code:>4}  {run.seconds:>7.1f} s"
            f"  {_statuses(run.stable):<18}  {_statuses(run.free)}" + ("" if ok else "  UNEXPECTED")
        )
    return 1 if failed else 0


def _statuses(counts: dict[int, int]) -> str:
    return ", ".join(f"{count} x {status}" for status, count in sorted(counts.items())) or "-"


if __name__ == "__main__":
    sys.exit(main())
