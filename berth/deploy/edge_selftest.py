"""The exported folder's own test: run.py gives what Berth's server gave for the sample rows.

`berth export` copies this file as `DIR/test_run.py`. Run it in the folder with
`python -m unittest` (standard library only, besides what run.py needs). `expected.json` holds
Berth's answer for `sample.json`, computed by the server's own runtime at export time; labels
must be equal exactly, probabilities (and a regressor's values, relative to max(1, |value|))
within the tolerance `expected.json` states.
"""

# The exported folder has no pytest: unittest's assertions are the point (and survive -O).
# ruff: noqa: PT009

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import unittest
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class RunnerMatchesBerth(unittest.TestCase):
    expected: dict[str, Any]

    @classmethod
    def setUpClass(cls) -> None:
        cls.expected = json.loads((HERE / "expected.json").read_text())

    def test_model_predict_equals_berth(self) -> None:
        run = importlib.import_module("run")
        actual = run.Model(HERE / "model.onnx").predict_file(HERE / "sample.json")
        self.assert_matches(actual)

    def test_command_line_equals_berth(self) -> None:
        printed = subprocess.run(
            [sys.executable, str(HERE / "run.py"), str(HERE / "sample.json")],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        self.assert_matches(json.loads(printed.stdout))

    def assert_matches(self, actual: dict[str, Any]) -> None:
        expected, tolerance = self.expected, self.expected["tolerance"]
        if expected["labels"]:
            self.assertEqual(actual["predictions"], expected["predictions"], "labels differ")
        else:
            self.assert_close(actual["predictions"], expected["predictions"], tolerance, True)
        self.assertEqual(actual.get("classes"), expected["classes"], "classes differ")
        if expected["probabilities"] is None:
            self.assertIsNone(actual.get("probabilities"), "unexpected probabilities")
        else:
            self.assertIsNotNone(actual.get("probabilities"), "probabilities are missing")
            self.assert_close(actual["probabilities"], expected["probabilities"], tolerance, False)

    def assert_close(self, actual: Any, expected: Any, tolerance: float, relative: bool) -> None:
        got, want = _flat(actual), _flat(expected)
        self.assertEqual(len(got), len(want), "a different number of values")
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            scale = max(1.0, abs(b)) if relative else 1.0
            self.assertLessEqual(
                abs(a - b) / scale, tolerance, f"value {index}: {a} vs Berth's {b}"
            )


def _flat(values: Any) -> list[float]:
    if isinstance(values, list):
        return [item for value in values for item in _flat(value)]
    return [float(values)]


if __name__ == "__main__":
    unittest.main()
