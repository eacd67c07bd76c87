"""Start-up time of the `berth` command: whole processes, run again and again.

Each command is run RUNS times as a new process, `berth --help`, `berth --version` and
`berth models list` (against a registry in a temporary BERTH_HOME holding one registered
model), and min, median and max wall times are printed against the targets. Several checkouts
can be measured side by side: their runs are interleaved, so a change in the machine's load
falls on all of them alike. The load average before and after is printed: on a busy machine,
read the medians, and the CPU time (user + system) of the processes, which waiting for a core
does not inflate.

Bytecode is cached as in an installed package: PYTHONDONTWRITEBYTECODE is dropped and the
caches go to a temporary PYTHONPYCACHEPREFIX (the checkouts are not written to), filled by a
warm-up run. --no-bytecode-cache keeps PYTHONDONTWRITEBYTECODE=1 instead: every run compiles
Berth's own modules again, as on a machine that sets it.

Usage: .venv/bin/python benchmarks/cli_startup.py [--runs N] [--no-bytecode-cache] [LABEL=DIR ...]
    e.g. benchmarks/cli_startup.py main=/tmp/berth-main branch=.
DIR is a checkout (the folder holding `berth/`); without one, this checkout is measured. The
`berth` script next to this interpreter runs each command, with PYTHONPATH=DIR.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

TARGETS = {"--help": 0.3, "--version": 0.3, "models list": 0.7}
"""Seconds a command may take (median of the runs) on a quiet machine."""


@dataclass
class Checkout:
    label: str
    source: Path
    home: Path
    pycache: Path | None
    """Where bytecode is cached; None: not at all (PYTHONDONTWRITEBYTECODE=1)."""
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BERTH_", "PYTHONDONT"))}
        env.update(PYTHONPATH=str(self.source), BERTH_HOME=str(self.home))
        if self.pycache is None:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        else:
            env["PYTHONPYCACHEPREFIX"] = str(self.pycache)
        return env


def berth_command() -> list[str]:
    """The installed `berth` script (what users run), else `python -m berth.cli`."""
    script = Path(sys.executable).with_name("berth")
    return [str(script)] if script.exists() else [sys.executable, "-m", "berth.cli"]


def run(checkout: Checkout, args: list[str], workdir: Path) -> tuple[float, float]:
    """Wall and CPU time of one `berth ARGS` process; fails loudly if the command fails."""
    before = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        [*berth_command(), *args],
        env=checkout.environment(),
        cwd=workdir,  # no berth.toml of the caller's is read
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{checkout.label}: `berth {' '.join(args)}` failed:\n{done.stderr}")
    return elapsed, _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def make_model(folder: Path) -> tuple[Path, Path]:
    """An iris LogisticRegression saved with skops, and a .npy sample of its inputs."""
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from skops.io import dump

    features, target = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=1000).fit(features, target)
    dump(model, folder / "iris.skops")
    np.save(folder / "iris.npy", features[:20])
    return folder / "iris.skops", folder / "iris.npy"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command (default 20)")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="compile every run (PYTHONDONTWRITEBYTECODE=1) instead of caching bytecode",
    )
    parser.add_argument("checkouts", nargs="*", metavar="LABEL=DIR")
    options = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    specs = options.checkouts or [f"this={here}"]

    with tempfile.TemporaryDirectory(prefix="berth-startup-") as temp:
        root = Path(temp)
        model, sample = make_model(root)
        checkouts = []
        for spec in specs:
            label, _, path = spec.rpartition("=")
            source = Path(path).resolve()
            if not (source / "berth" / "cli" / "main.py").is_file():
                raise SystemExit(f"{path} is not a Berth checkout (no berth/cli/main.py)")
            label = label or source.name
            pycache = None if options.no_bytecode_cache else root / "pycache"
            checkout = Checkout(label, source, root / f"home-{len(checkouts)}", pycache)
            # Each checkout makes its own registry (and migrates it) with its own code.
            run(checkout, ["models", "register", "iris", str(model), "--sample", str(sample),
                           "--alias", "production"], root)  # fmt: skip
            checkouts.append(checkout)

        caching = "not cached" if options.no_bytecode_cache else "cached"
        print(f"berth start-up, {options.runs} runs per command, bytecode {caching}")
        print(f"before: {load()}")
        for command in TARGETS:
            args = command.split()
            for checkout in checkouts:
                run(checkout, args, root)  # warm-up: bytecode and file caches
            for _ in range(options.runs):
                for checkout in checkouts:
                    wall, cpu = run(checkout, args, root)
                    checkout.times.setdefault(command, []).append(wall)
                    checkout.cpu.setdefault(command, []).append(cpu)
        print(f"after: {load()}")

    width = max(8, *(len(c.label) for c in checkouts))
    print(f"\n{'command':<17}  {'target':>6}  {'checkout':<{width}}  {'min':>6}  {'median':>6}  "
          f"{'max':>6}  {'cpu':>6}  median within target")  # fmt: skip
    for command, target in TARGETS.items():
        for checkout in checkouts:
            times = checkout.times[command]
            median = statistics.median(times)
            print(
                f"{'berth ' + command:<17}  {target:>5.1f}s  {checkout.label:<{width}}  "
                f"{min(times):>5.3f}s  {median:>5.3f}s  {max(times):>5.3f}s  "
                f"{statistics.median(checkout.cpu[command]):>5.3f}s  "
                f"{'yes' if median <= target else 'no'}"
            )
    print("(min, median, max: wall time; cpu: median user + system time of the process)")


if __name__ == "__main__":
    main()
