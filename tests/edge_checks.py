"""What the tests of `berth export` check an exported folder with: its runner run as a user
would, under an import guard that allows only the standard library, numpy and onnxruntime; its
expected.json and sample.json; and its own test, run as `python -m unittest` in the folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

GUARD = r"""
import importlib.abc
import runpy
import sys

ALLOWED = set(sys.stdlib_module_names) | {"numpy", "onnxruntime"}


class OnlyStdlibNumpyOnnxruntime(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top not in ALLOWED:
            print(f"guard refused: {name}", file=sys.stderr)
            raise ModuleNotFoundError(f"guard: {name} is not stdlib, numpy or onnxruntime")
        return None


sys.meta_path.insert(0, OnlyStdlibNumpyOnnxruntime())
for loaded in [m for m in sys.modules if m.partition(".")[0] not in ALLOWED | {"__main__"}]:
    del sys.modules[loaded]  # what site imported at startup must be imported again, guarded
script, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""
"""`python -I -c GUARD SCRIPT ARGS`: SCRIPT as __main__, able to import only the standard
library, numpy and onnxruntime (and their submodules); any other import fails."""


def guarded(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-c", GUARD, str(script), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def runner_answer(folder: Path, data: Path, cwd: Path) -> dict[str, Any]:
    """`python run.py DATA` under the guard, from another directory; its printed JSON."""
    done = guarded(folder / "run.py", str(data), cwd=cwd)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def expected(folder: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((folder / "expected.json").read_text())
    return document


def sample_rows(folder: Path) -> list[Any]:
    rows: list[Any] = json.loads((folder / "sample.json").read_text())["instances"]
    return rows


def own_test(folder: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "unittest", "-v"],
        cwd=folder,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
