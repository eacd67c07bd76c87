"""CI/CD for model repositories: `berth ci init` writes a pipeline (GitHub Actions or GitLab CI)
that tests, gates, registers, ships and canaries a model through a Berth server's API, and
`berth ci run` runs that pipeline on this machine.

- `config`: berth-ci.toml, the one file with the thresholds and names the pipeline uses;
- `commands`: that file turned into `berth` command lines and variables for the steps;
- `github`, `gitlab`, `scaffold`: the files `berth ci init` writes;
- `smoke`: the checks against the staging alias over HTTP (v1 and the Open Inference Protocol);
- `pipeline`, `github_plan`, `gitlab_plan`, `standins`, `runner`: the local runner.
"""
