"""What the local runner puts in place of what only the provider has.

| on the provider | here |
|---|---|
| `uses: actions/checkout` | nothing: the steps run in the working tree as it is |
| `uses: actions/setup-python` | nothing: the steps use the Python that runs `berth ci run` |
| `uses: docker/login-action` | nothing: no registry is reached |
| any other `uses:` action | not run; the log says so |
| `pip` | a stand-in that installs nothing: the steps use this machine's packages |
| `docker` | a stand-in: `build` checks the context has a Dockerfile, `push` and `login` reach no registry |
| `berth`, `python` | the Berth and the Python that run `berth ci run` |
| a job's approval (GitHub environment reviewers, GitLab manual job) | given by `--approve` (the default), or the job is not run (`--no-approve`) |

The stand-ins are scripts in a private folder put first on the steps' PATH.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

_USES = {
    "actions/checkout": "the steps run in the working tree as it is",
    "actions/setup-python": f"the steps use this machine's Python ({sys.executable})",
    "docker/login-action": "no registry is reached: docker is a stand-in here",
    "docker/setup-buildx-action": "docker is a stand-in here",
}

_DOCKER = """\
#!/usr/bin/env bash
# berth ci run: a stand-in for docker; nothing is built, pushed or logged in to.
case "$1" in
  login)
    cat >/dev/null 2>&1 || true
    echo "[stand-in] docker login: no registry is reached" ;;
  build)
    context="${@: -1}"
    if [ ! -f "$context/Dockerfile" ]; then
      echo "[stand-in] docker build: $context/Dockerfile does not exist" >&2
      exit 1
    fi
    echo "[stand-in] docker build: $context/Dockerfile is there; no image is built" ;;
  push)
    echo "[stand-in] docker push ${@: -1}: nothing leaves this machine" ;;
  *)
    echo "[stand-in] docker $*: not run" ;;
esac
"""

_PIP = """\
#!/usr/bin/env bash
# berth ci run: a stand-in for pip; the steps use the packages of this machine.
echo "[stand-in] pip $*: nothing installed; the steps use @PYTHON@'s packages"
"""

_BERTH = """\
#!/usr/bin/env bash
# berth ci run: the Berth that runs the pipeline.
exec @PYTHON@ -m berth.cli "$@"
"""

_PYTHON = """\
#!/usr/bin/env bash
# berth ci run: the Python that runs the pipeline, with its packages.
exec @PYTHON@ "$@"
"""


def uses_standin(action: str) -> str:
    name = action.split("@", 1)[0]
    found = _USES.get(name)
    return f"stand-in: {found}" if found else "not run: an action of the marketplace"


def write_bin(folder: Path) -> Path:
    """The stand-ins' folder, to put first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    python = shlex.quote(sys.executable)
    scripts = {
        "docker": _DOCKER,
        "pip": _PIP.replace("@PYTHON@", python),
        "pip3": _PIP.replace("@PYTHON@", python),
        "berth": _BERTH.replace("@PYTHON@", python),
        "python": _PYTHON.replace("@PYTHON@", python),
        "python3": _PYTHON.replace("@PYTHON@", python),
    }
    for name, text in scripts.items():
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
    return folder
