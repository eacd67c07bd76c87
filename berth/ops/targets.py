"""What to load and whether it can be loaded, settled before a run starts.

A model reference becomes a URL and a body by asking the server (the model and version must
exist; the default body is built from its example rows), and `preflight` sends the request once
to check that the server answers and accepts the credentials. Everything here raises a
`BerthError` the user can act on::

    BerthError
    ├── NotFound / Unauthenticated / Forbidden    the server said 404 / 401 / 403
    └── BenchError                                anything else that stops a run from starting
        └── ServerUnreachable                     no HTTP answer at all
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson

from berth.errors import BerthError, Forbidden, InvalidInput, NotFound, Unauthenticated
from berth.ops.http1 import TRANSPORT_ERRORS, Connection, HttpRequest, Response, error_kind
from berth.registry.references import DEFAULT_ALIAS, Reference, parse_reference


class BenchError(BerthError):
    """A load test cannot start; the message says what to change."""


class ServerUnreachable(BenchError):
    pass


async def fetch(request: HttpRequest, timeout: float) -> Response:
    """One request on its own connection; `ServerUnreachable` if no response comes back."""
    connection = Connection(request.endpoint())
    try:
        async with asyncio.timeout(timeout):
            return await connection.exchange(request.encode())
    except TRANSPORT_ERRORS as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else exc
        raise ServerUnreachable(
            f"cannot reach {request.origin} ({error_kind(exc)}: {reason}); start the server "
            "(`berth serve`) or point --server at it"
        ) from exc
    finally:
        connection.close()


JSON_HEADERS = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Target:
    """What to load: a model reference (`iris`, `iris:2`, `iris@production`), a path on
    `server` (`/health`) or a full URL."""

    target: str
    server: str
    protocol: str = "v1"
    """`v1` (Berth's REST API) or `v2` (Open Inference Protocol); model references only."""
    body: bytes | None = None
    """The body to send; default for a model: its registered example rows, else none (GET)."""
    rows: int = 1
    """Rows per request in a default model body (v1: batch-predict when more than one)."""
    api_key: str | None = field(default=None, repr=False)
    verify_tls: bool = True

    @property
    def is_model(self) -> bool:
        return "://" not in self.target and not self.target.startswith("/")

    def url(self, path: str) -> str:
        return self.server.rstrip("/") + path

    def request(self, url: str, method: str, body: bytes = b"") -> HttpRequest:
        headers = dict(JSON_HEADERS) if method == "POST" else {}
        return HttpRequest(url, method, headers, body, self.api_key, self.verify_tls)


async def resolve_target(target: Target, timeout: float) -> HttpRequest:
    """The request to repeat. For a model, its metadata is fetched: the model and version must
    exist, and the default body is built from its example rows."""
    if target.protocol not in ("v1", "v2"):
        raise InvalidInput(f"protocol '{target.protocol}' is not known; use v1 or v2")
    if target.rows < 1:
        raise InvalidInput("rows must be at least 1")
    if not target.is_model:
        if target.rows != 1:
            raise InvalidInput("--rows builds a model's body; for a path or URL pass --body")
        url = target.target if "://" in target.target else target.url(target.target)
        method = "GET" if target.body is None else "POST"
        return target.request(url, method, target.body or b"")
    if target.body is not None and target.rows != 1:
        raise InvalidInput("--rows builds the body; with --body, put the rows in the body")
    reference = parse_reference(target.target)
    model = f"model '{reference.name}'"
    detail = await _get_json(target, f"/api/v1/models/{reference.name}", model, timeout)
    version = _pick_version(detail, reference)
    body = target.body
    if body is None:
        body = await _example_body(target, version, timeout)
    return target.request(target.url(_predict_path(target, reference, version)), "POST", body)


async def preflight(request: HttpRequest, timeout: float, model: str | None = None) -> Response:
    """Send the request once: the server must answer and accept the credentials, and for a
    `model` the route must exist. Raises the `BerthError` that says what to fix."""
    response = await fetch(request, timeout)
    refusal = refused(response, request.origin, model)
    if refusal is not None:
        raise refusal
    return response


def refused(response: Response, origin: str, missing: str | None) -> BerthError | None:
    """What a 401, 403 or (for a `missing` model) 404 answer means for the user."""
    status, message = response.status, _server_message(response)
    if status == 401:
        return Unauthenticated(
            f"{origin} refused the credentials (401: {message}); pass --api-key KEY or set "
            "BERTH_API_KEY"
        )
    if status == 403:
        return Forbidden(
            f"{origin} refused the request (403: {message}); use a key with the predict scope"
        )
    if status == 404 and missing is not None:
        return NotFound(
            f"{missing} not found on {origin} (404: {message}); see `berth models list`"
        )
    return None


def _server_message(response: Response) -> str:
    try:
        document = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        return str(document["error"])
    return response.body[:200].decode("utf-8", "replace").strip() or "no details"


async def _get_json(target: Target, path: str, what: str, timeout: float) -> dict[str, Any]:
    request = target.request(target.url(path), "GET")
    response = await fetch(request, timeout)
    refusal = refused(response, request.origin, what)
    if refusal is None and response.status != 200:
        refusal = BenchError(
            f"GET {request.url} answered {response.status}: {_server_message(response)}"
        )
    if refusal is not None:
        raise refusal
    document = orjson.loads(response.body)
    if not isinstance(document, dict):
        raise BenchError(f"GET {request.url} did not answer a JSON object; is it a Berth server?")
    return document


def _pick_version(detail: dict[str, Any], reference: Reference) -> dict[str, Any]:
    name, aliases = reference.name, detail.get("aliases") or {}
    if reference.alias is not None and reference.alias not in aliases:
        raise NotFound(
            f"model '{name}' has no alias '{reference.alias}' (aliases: "
            f"{', '.join(aliases) or 'none'}); see `berth models show {name}`"
        )
    number = reference.version
    if number is None:
        number = aliases.get(reference.alias or DEFAULT_ALIAS, detail.get("latest_version"))
    versions = {v.get("version"): v for v in detail.get("versions") or [] if isinstance(v, dict)}
    if number not in versions:
        raise NotFound(
            f"model '{name}' has no version {number} (versions: "
            f"{', '.join(map(str, versions)) or 'none'}); see `berth models show {name}`"
        )
    found: dict[str, Any] = versions[number]
    return found


def _predict_path(target: Target, reference: Reference, version: dict[str, Any]) -> str:
    if target.protocol == "v1":
        batch = target.rows > 1 or _has_instances(target.body)
        return f"/api/v1/models/{reference}/{'batch-predict' if batch else 'predict'}"
    if reference.version is None and reference.alias is None:
        return f"/v2/models/{reference.name}/infer"
    # OIP has no aliases: an alias is resolved once, here, to its version
    return f"/v2/models/{reference.name}/versions/{version['version']}/infer"


async def _example_body(target: Target, version: dict[str, Any], timeout: float) -> bytes:
    examples = version.get("example") or []
    ref = f"{version.get('model')}:{version.get('version')}"
    if not examples:
        raise BenchError(
            f"{ref} was registered without a sample, so there is no example row to send; "
            "pass --body (JSON text or @file.json)"
        )
    rows = [examples[i % len(examples)] for i in range(target.rows)]
    if target.protocol == "v1":
        document: dict[str, Any] = (
            {"features": rows[0]} if target.rows == 1 else {"instances": rows}
        )
    else:
        path = f"/v2/models/{version.get('model')}/versions/{version.get('version')}"
        metadata = await _get_json(target, path, ref, timeout)
        document = {"inputs": _v2_inputs(ref, metadata.get("inputs") or [], rows)}
    return orjson.dumps(document)


def _has_instances(body: bytes | None) -> bool:
    """Whether a given v1 body is a batch (`{"instances": ...}`) rather than one row."""
    try:
        document = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and "instances" in document


def _v2_inputs(ref: str, inputs: list[dict[str, Any]], rows: list[Any]) -> list[dict[str, Any]]:
    if isinstance(rows[0], dict):  # a tabular model: one input per column
        return [
            {
                "name": spec["name"],
                "datatype": spec["datatype"],
                "shape": [len(rows)],
                "data": [row.get(spec["name"]) for row in rows],
            }
            for spec in inputs
        ]
    if len(inputs) != 1:
        raise BenchError(
            f"{ref} takes {len(inputs)} input tensors and its example rows fill only one; "
            "pass --body with an Open Inference Protocol request"
        )
    shape = [len(rows), *_shape(rows[0])]
    return [
        {"name": inputs[0]["name"], "datatype": inputs[0]["datatype"], "shape": shape, "data": rows}
    ]


def _shape(value: Any) -> list[int]:
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape
