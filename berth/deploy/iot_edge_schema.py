"""Is an IoT Edge deployment manifest one the hub and the device accept? Checked before writing.

The manifest is validated against the SchemaStore schemas vendored in `schemas/` (see its
README): the whole document against the deployment schema, and each runtime twin against the
schema of the `schemaVersion` it declares. What a JSON Schema cannot say is checked here: every
`createOptions` value, put back together from its chunks, is a JSON object (IoT Edge requires a
string holding JSON); each chunk fits edgeAgent's twin value size and there are few enough of
them; each twin's desired properties fit IoT Hub's limit.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

from berth.errors import InvalidInput

SCHEMAS = Path(__file__).parent / "schemas"
DEPLOYMENT_SCHEMA = "azure-iot-edge-deployment-2.0.json"
TWIN_SCHEMAS = {
    ("$edgeAgent", "1.1"): "azure-iot-edgeagent-deployment-1.1.json",
    ("$edgeHub", "1.1"): "azure-iot-edgehub-deployment-1.1.json",
}
"""Schemas of the runtime twins, by twin and `schemaVersion`."""
CHUNK_SIZE = 512
"""Longest `createOptions` value edgeAgent writes (its TwinValueMaxSize); longer options are
split into `createOptions01`, `createOptions02`... which it joins back in order."""
MAX_CHUNKS = 8
"""The IoT Edge tools' limit on chunks: 4 KB of create options in all."""
MAX_DESIRED_BYTES = 32 * 1024
"""IoT Hub's limit on the desired properties of one module twin."""

_CHUNK = re.compile(r"createOptions(?P<index>[0-9]{2})?")


def require_validator() -> None:
    """Fail early, before the image's files are made, when jsonschema is not installed."""
    try:
        import jsonschema  # type: ignore[import-untyped]  # noqa: F401 - whether it imports
    except ImportError:
        raise InvalidInput(
            "--target iot-edge validates the manifest with jsonschema, which is not installed "
            "here: pip install 'berth[iot-edge]'"
        ) from None


def check(manifest: dict[str, Any]) -> None:
    """Raise InvalidInput naming the first problem (and how many there are) of `manifest`."""
    found = problems(manifest)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise InvalidInput(
            f"berth build made an IoT Edge manifest that is not valid: {found[0]}{more}; "
            "nothing was written; please report this with the command you ran"
        )


def problems(manifest: dict[str, Any]) -> list[str]:
    """Every reason the hub or the device would refuse `manifest`, as `where: what` lines."""
    found = _schema_problems(DEPLOYMENT_SCHEMA, manifest)
    content = manifest.get("modulesContent")
    if not isinstance(content, dict):
        return found
    for twin in ("$edgeAgent", "$edgeHub"):
        desired = _desired(content, twin)
        if not desired:
            continue
        version = str(desired.get("schemaVersion"))
        schema = TWIN_SCHEMAS.get((twin, version))
        if schema is None:
            found.append(f"{twin}: no schema for schemaVersion {version}")
        else:
            found += _schema_problems(schema, {twin: content[twin]})
        size = len(json.dumps(desired, separators=(",", ":")).encode())
        if size > MAX_DESIRED_BYTES:
            found.append(f"{twin}: desired properties are {size:,} bytes, over IoT Hub's 32 KB")
    for where, module in _modules(_desired(content, "$edgeAgent")):
        settings = module.get("settings")
        if isinstance(settings, dict):
            found += [f"{where}: {problem}" for problem in create_options_problems(settings)]
    return found


def create_options(settings: dict[str, Any]) -> str | None:
    """A module's `createOptions` as edgeAgent reads it: the chunks joined in order."""
    chunks: dict[int, str] = {}
    for key, value in settings.items():
        found = _CHUNK.fullmatch(key)
        if found and isinstance(value, str):
            chunks[int(found["index"] or 0)] = value
    return "".join(chunks[i] for i in sorted(chunks)) if chunks else None


def create_options_problems(settings: dict[str, Any]) -> list[str]:
    keys = sorted(key for key in settings if _CHUNK.fullmatch(key))
    expected = ["createOptions", *(f"createOptions{i:02d}" for i in range(1, len(keys)))]
    found = []
    if keys and sorted(expected) != keys:
        found.append(f"createOptions chunks {keys} are not createOptions, createOptions01, ...")
    if len(keys) > MAX_CHUNKS:
        found.append(f"createOptions has {len(keys)} chunks; at most {MAX_CHUNKS} (4 KB)")
    for key in keys:
        value = settings[key]
        if isinstance(value, str) and len(value) > CHUNK_SIZE:
            found.append(f"{key} is {len(value)} characters; at most {CHUNK_SIZE} per chunk")
    text = create_options(settings)
    if text is not None:
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            return [*found, f"createOptions is not JSON ({exc})"]
        if not isinstance(parsed, dict):
            found.append("createOptions is JSON but not an object")
    return found


def _desired(content: dict[str, Any], twin: str) -> dict[str, Any]:
    """A twin's desired properties, or {} when the manifest has none (the schema says so)."""
    found = content.get(twin)
    desired = found.get("properties.desired") if isinstance(found, dict) else None
    return desired if isinstance(desired, dict) else {}


def _modules(agent: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    system = agent.get("systemModules", {})
    custom = agent.get("modules", {})
    pairs = (
        [(f"systemModules.{n}", m) for n, m in system.items()] if isinstance(system, dict) else []
    )
    if isinstance(custom, dict):
        pairs += [(f"modules.{n}", m) for n, m in custom.items()]
    return [(where, module) for where, module in pairs if isinstance(module, dict)]


def _schema_problems(name: str, document: Any) -> list[str]:
    errors = _validator(name).iter_errors(document)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(document)'}: {error.message} ({name})"
        for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path])
    ]


@cache
def _validator(name: str) -> Any:
    import jsonschema

    schema = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)
