"""Pinned requirements for the image: Berth's runtime dependency closure as installed here.

The versions are the ones this environment runs, so the image runs what was tested here. The
closure follows `Requires-Dist` from Berth (with the extras its flavors need) through every
installed distribution, evaluating markers for the image: CPython on Linux x86_64 at this
interpreter's version. Every line is `name==version`; the Dockerfile installs them with
`--no-deps` and runs `pip check`, so nothing unpinned gets in and nothing missing goes unnoticed.

Berth itself goes into the image as a wheel built from this source tree when it is installed
from one (a development checkout), or as `berth==VERSION` from the package index otherwise.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import InvalidRequirement, Requirement

from berth import __version__
from berth.errors import InvalidInput

PROJECT = "berth"
FLAVOR_EXTRAS = {"onnx": "onnx", "torch": "torch"}
"""Berth extras a flavor needs in the image (sklearn and python need none)."""
PYTORCH_INDEX = "https://download.pytorch.org/whl"
_EPOCH = "315532800"
"""1980-01-01, the earliest time a zip entry can carry."""
_SOURCE_FILES = ("pyproject.toml", "README.md", "setup.cfg", "setup.py", "MANIFEST.in", "LICENSE")


def canonical(name: str) -> str:
    """PEP 503 normalized name: `PyYAML` and `pyyaml` are one distribution."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_environment() -> dict[str, str]:
    """Marker values of the image: this interpreter's version, on Linux x86_64."""
    environment = {key: str(value) for key, value in default_environment().items()}
    environment.update(
        {
            "os_name": "posix",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "platform_python_implementation": "CPython",
            "implementation_name": "cpython",
        }
    )
    return environment


def closure(roots: Iterable[str]) -> dict[str, str]:
    """Installed versions of `roots` (requirement strings) and everything they need: {name: version}.

    Raises InvalidInput naming a needed distribution that is not installed here, since its
    version could not be pinned.
    """
    environment = image_environment()
    pins: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    pending = [(_parse(root), "the build") for root in roots]
    while pending:
        requirement, needed_by = pending.pop()
        name = canonical(requirement.name)
        extras = set(requirement.extras)
        if name in extras_seen and extras <= extras_seen[name]:
            continue
        extras_seen.setdefault(name, set()).update(extras)
        distribution = _installed(requirement.name, needed_by)
        pins[name] = distribution.version
        for text in distribution.requires or ():
            child = _parse(text)
            if _applies(child, extras_seen[name], environment):
                pending.append((child, f"{name}=={distribution.version}"))
    return pins


def render(pins: dict[str, str], header: str) -> str:
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    return header + "".join(f"{line}\n" for line in [*_extra_indexes(pins), *lines])


def _extra_indexes(pins: dict[str, str]) -> list[str]:
    """PyTorch's builds with a local version (2.13.0+cpu) live on PyTorch's index, not PyPI."""
    labels = sorted(
        {v.split("+", 1)[1] for n, v in pins.items() if n.startswith("torch") and "+" in v}
    )
    return [f"--extra-index-url {PYTORCH_INDEX}/{label}" for label in labels]


def berth_roots(flavors: Iterable[str], packages: Iterable[str]) -> list[str]:
    """What the image needs: Berth with its flavors' extras, and the extra packages asked for."""
    extras = sorted({FLAVOR_EXTRAS[f] for f in flavors if f in FLAVOR_EXTRAS})
    root = f"{PROJECT}[{','.join(extras)}]" if extras else PROJECT
    return [root, *packages]


def source_tree() -> Path | None:
    """The source checkout Berth runs from (its pyproject.toml names the project), if any."""
    import berth

    root = Path(berth.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return None
    try:
        name = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return root if canonical(str(name)) == PROJECT else None


def build_wheel(source: Path, out: Path) -> Path:
    """Build Berth's wheel from a copy of the source tree (the checkout is left untouched)."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="berth-wheel-") as scratch:
        copy = Path(scratch) / "src"
        copy.mkdir()
        for name in _SOURCE_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, copy / name)
        shutil.copytree(
            source / PROJECT, copy / PROJECT, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
        command = [
            sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
            "--no-cache-dir", "--quiet", "--wheel-dir", str(out), str(copy),
        ]  # fmt: skip
        # Zip entries dated by SOURCE_DATE_EPOCH, not by when the copy was made: the same source
        # gives the same wheel, byte for byte, so the image's layers are cached.
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", _EPOCH)}
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    wheels = sorted(out.glob(f"{PROJECT}-{__version__}-*.whl"))
    if result.returncode != 0 or not wheels:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise InvalidInput(
            f"could not build Berth's wheel from {source}: {' '.join(tail) or 'no wheel made'}; "
            "install setuptools and pip in this environment (`pip install setuptools`)"
        )
    return wheels[-1]


def python_tag() -> str:
    """`py311` for this interpreter: the Python of the Ray image must match the pins."""
    major, minor = sys.version_info[:2]
    return f"py{major}{minor}"


def machine_note() -> str:
    """Said in generated files when the pins were resolved on another platform than the image's."""
    if sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64"):
        return ""
    return (
        f"# Note: resolved on {sys.platform}/{platform.machine()}; versions of platform-specific\n"
        "# wheels may not exist for Linux x86_64. Run `berth build` on Linux for exact pins.\n"
    )


def _parse(text: str) -> Requirement:
    try:
        return Requirement(text)
    except InvalidRequirement as exc:
        raise InvalidInput(f"'{text}' is not a requirement; write a name such as lightgbm") from exc


def _applies(requirement: Requirement, extras: set[str], environment: dict[str, str]) -> bool:
    if requirement.marker is None:
        return True
    return any(
        requirement.marker.evaluate({**environment, "extra": extra})
        for extra in (extras or {""}) | {""}
    )


def _installed(name: str, needed_by: str) -> metadata.Distribution:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        raise InvalidInput(
            f"{name} is needed by {needed_by} but is not installed here, so its version cannot "
            f"be pinned; install it (`pip install {name}`) and build again"
        ) from None
