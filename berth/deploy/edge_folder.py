"""The files of an edge export, written to a staging folder, tested there, then installed.

The folder is self-contained: the graph, its signature, the runner (`edge_runner.py` copied as
`run.py`), its test (`edge_selftest.py` copied as `test_run.py`), the sample rows with Berth's
answers, pinned requirements and a README. Its own test runs in a subprocess before anything
reaches the target directory, so a folder that is handed over has passed it once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from berth import __version__
from berth.deploy.edge_sample import Sample
from berth.errors import InvalidInput
from berth.registry.versions import VersionInfo

MODEL = "model.onnx"
RUNNER = "run.py"
SELF_TEST = "test_run.py"
FILES = (
    MODEL,
    "signature.json",
    RUNNER,
    SELF_TEST,
    "requirements.txt",
    "sample.json",
    "expected.json",
    "README.md",
)
SELF_TEST_SECONDS = 300
_TEMPLATES = {RUNNER: "edge_runner.py", SELF_TEST: "edge_selftest.py"}


class SelfTestFailed(InvalidInput):
    """The export's own test failed in the staging folder; nothing was written to the target."""


@dataclass(frozen=True)
class Contents:
    source: VersionInfo
    graph: bytes
    sample: Sample
    tolerance: float
    how: str
    """How the graph was made, e.g. 'converted from sklearn (float, skl2onnx 1.20.0)'."""
    figures: tuple[str, ...]
    """The equivalence figures, one line each, for the README."""
    why_different: str
    """Why the graph's numbers may differ from Berth's at all, e.g. 'computes in float32'."""


def check_target(out: Path, force: bool) -> Path:
    """The target directory, refused when it is a file, or holds files and --force is not given."""
    target = out.expanduser()
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"--out {target} is a file; give a directory to export into")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise InvalidInput(
            f"--out {target} is not empty; choose an empty or new directory, or pass --force "
            f"to overwrite the export's files there ({', '.join(FILES)})"
        )
    return target


def write(folder: Path, contents: Contents) -> None:
    """Every file of the export into `folder`."""
    source, sample = contents.source, contents.sample
    (folder / MODEL).write_bytes(contents.graph)
    _json(folder / "signature.json", source.signature.to_dict())
    for name, template in _TEMPLATES.items():
        shutil.copyfile(Path(__file__).with_name(template), folder / name)
    (folder / "requirements.txt").write_text(requirements())
    _json(folder / "sample.json", {"instances": sample.instances})
    expected = {
        "source": source.ref,
        "sha256": source.artifact.sha256,
        "tolerance": contents.tolerance,
        "labels": sample.labels,
        **sample.expected,
    }
    _json(folder / "expected.json", expected)
    (folder / "README.md").write_text(readme(contents))


def requirements() -> str:
    """The runner's only dependencies, pinned to the versions the export was tested with."""
    return f"onnxruntime=={onnxruntime.__version__}\nnumpy=={np.__version__}\n"


def self_test(folder: Path) -> None:
    """Run the folder's test_run.py as a user would: `python -m unittest` in the folder."""
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "unittest", "-q"],
            cwd=folder,
            env=environment,
            capture_output=True,
            text=True,
            timeout=SELF_TEST_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SelfTestFailed(
            f"the export's own test did not finish within {SELF_TEST_SECONDS} s; nothing was "
            "written. Check that onnxruntime works here (`python -c 'import onnxruntime'`)"
        ) from exc
    ran = re.search(r"^Ran (\d+) tests? ", finished.stderr, re.MULTILINE)
    if finished.returncode != 0 or ran is None or int(ran.group(1)) == 0:
        tail = "\n".join(finished.stderr.strip().splitlines()[-15:])
        raise SelfTestFailed(
            f"the export's own test failed, so nothing was written; please report this as a "
            f"Berth bug with this output:\n{tail}"
        )


def install(staged: Path, target: Path) -> None:
    """Copy the tested files into the target directory (created if needed)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copyfile(staged / name, target / name)


def readme(contents: Contents) -> str:
    source, sample = contents.source, contents.sample
    first = json.dumps(sample.instances[0])
    probabilities = ', "probabilities": [...], "classes": [...]' if sample.labels else ""
    compared = (
        f"Labels must equal Berth's exactly; probabilities may differ by at most "
        f"{contents.tolerance:g}"
        if sample.labels
        else f"Predictions may differ from Berth's by at most {contents.tolerance:g} relative "
        "to max(1, |value|)"
    )
    figures = "\n".join(f"- {line}" for line in contents.figures)
    return f"""# {source.ref}: edge export

`{source.ref}` ({source.flavor}, sha256 `{source.artifact.sha256[:12]}`), {contents.how}.
Exported by Berth {__version__} on {datetime.now(UTC):%Y-%m-%d}. It runs with onnxruntime and
numpy only: no Berth{_framework(source.flavor)}.

| file | what it is |
|---|---|
| `model.onnx` | the model |
| `signature.json` | the inputs it takes (Berth's signature) |
| `run.py` | the runner: checks rows against the signature, predicts, prints JSON |
| `requirements.txt` | onnxruntime and numpy, pinned to the versions it was tested with |
| `sample.json` | {len(sample.instances)} sample rows |
| `expected.json` | Berth's answers for them, from the server's own runtime |
| `test_run.py` | checks run.py against expected.json |

## Run

```bash
pip install -r requirements.txt
python run.py sample.json     # {{"predictions": [...]{probabilities}}}
python -m unittest            # run.py's answers equal Berth's (expected.json)
```

`run.py INPUT` takes a JSON file (`{{"instances": [row, ...]}}`, `{{"features": row}}` or a list of
rows, as Berth's v1 API takes them){" or a CSV file with a header row naming the columns (an empty cell is null)" if source.signature.kind == "tabular" else ""}.
From Python:

```python
from run import Model

model = Model("model.onnx")
print(model.predict([{first}]))
```

## Equivalence with Berth

{figures}

{compared}: {contents.why_different}.
"""


def _framework(flavor: str) -> str:
    """The framework the folder does without, besides Berth (none for an ONNX version)."""
    names = {"sklearn": "scikit-learn", "torch": "PyTorch"}
    return f", no {names[flavor]}" if flavor in names else ""


def _json(path: Path, document: Any) -> None:
    """JSON for people too: a top-level key per line, and a list's items one per line."""
    if not isinstance(document, dict):
        path.write_text(json.dumps(document) + "\n")
        return
    lines = [f"  {json.dumps(key)}: {_value(value)}" for key, value in document.items()]
    path.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def _value(value: Any) -> str:
    if not isinstance(value, list) or not any(isinstance(item, list | dict) for item in value):
        return json.dumps(value)
    return "[\n" + ",\n".join(f"    {json.dumps(item)}" for item in value) + "\n  ]"
