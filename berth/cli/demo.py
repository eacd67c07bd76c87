"""`berth demo`: train a small churn classifier, register it, create a key, serve it."""

from __future__ import annotations

import json
import shlex
import threading
import time
from typing import TYPE_CHECKING, Any

import typer

from berth.cli.context import console, keys, registry, settings
from berth.cli.serve import ServerOptions, start_server
from berth.demo_model import MODEL, train

if TYPE_CHECKING:  # imported when the demo runs, not by every command
    from berth.registry.versions import VersionInfo


def demo(
    port: int | None = typer.Option(None, help="Port to serve on (default BERTH_PORT or 8321)."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve after setting up."),
) -> None:
    """Train a churn classifier, register it as churn@production, create a key and serve it.

    Example: berth demo --port 9000
    """
    from berth.registration.service import RegisterRequest, register
    from berth.store.audit import cli_actor

    current = settings()
    port = port or current.port
    store = registry()  # opened first: a broken setup fails before seconds of training
    with console.status("Training a churn classifier on generated data ..."):
        model_path, sample, signature, metrics = train(current.home / "demo")
    version = register(
        store,
        RegisterRequest(
            name=MODEL,
            path=model_path,
            sample=sample,
            signature=signature,
            metrics=metrics,
            tags={"source": "berth demo"},
            description="Synthetic churn classifier trained by `berth demo`",
            aliases=("production",),
            actor=cli_actor(),
        ),
    )
    console.print(f"Registered [bold]{version.ref}[/] as {MODEL}@production (metrics {metrics})")
    # As `berth models register` does: the pipeline serves through its checked ONNX twin.
    from berth.cli.model_reports import accelerated_line
    from berth.optimize.twin import accelerate_registered

    with console.status("Making its ONNX twin and checking it ...") as status:
        version = accelerate_registered(
            store,
            version,
            actor=cli_actor(),
            progress=lambda step: status.update(f"Accelerated twin: {step} ..."),
        )
    if version.accelerated is not None:
        twin = version.accelerated.to_dict()
        console.print(accelerated_line(MODEL, twin), highlight=False, markup=False)
    info, secret = keys().create(f"demo-{int(time.time())}", ("predict", "read"))
    console.print(f"Created API key [bold]{info.name}[/] (predict, read)")
    base = f"http://{current.host}:{port}"
    if not serve:
        command = "berth serve" + (f" --port {port}" if port != current.port else "")
        banner = curl_commands(base, secret, version, serve_with=command)
        console.print(banner, highlight=False, soft_wrap=True, markup=False)
        return
    banner = curl_commands(base, secret, version)
    threading.Thread(target=_announce_when_ready, args=(base, banner), daemon=True).start()
    start_server(ServerOptions(served=[f"{MODEL}@production"], host=current.host, port=port))


def curl_commands(base: str, key: str, version: VersionInfo, serve_with: str | None = None) -> str:
    """What to paste to try the demo model; `serve_with` is the command that serves it, when
    it is not served yet (`berth demo --no-serve`)."""
    example = version.example or []
    intro = (
        "Berth is serving churn@production. Try it (paste into another terminal):"
        if serve_with is None
        else f"churn@production is registered but not served: start the server with "
        f"`{serve_with}`, then try it (paste into another terminal):"
    )
    headers = f"-H 'X-API-Key: {key}' -H 'Content-Type: application/json'"
    v1_single = json.dumps({"features": example[0]})
    v1_batch = json.dumps({"instances": example[:2]})
    v2_body = json.dumps({"inputs": v2_inputs(version, example[:1])})
    return "\n".join(
        [
            "",
            intro,
            "",
            "# v1: one row",
            f"curl -s {base}/api/v1/models/{MODEL}/predict {headers} -d {shlex.quote(v1_single)}",
            "# v1: several rows",
            f"curl -s {base}/api/v1/models/{MODEL}/batch-predict {headers} -d {shlex.quote(v1_batch)}",
            "# Open Inference Protocol v2: model metadata, then inference",
            f"curl -s {base}/v2/models/{MODEL} -H 'X-API-Key: {key}'",
            f"curl -s {base}/v2/models/{MODEL}/infer {headers} -d {shlex.quote(v2_body)}",
            "# operations (open)",
            f"curl -s {base}/ready",
            "",
            f"API docs: {base}/docs" + ("    Stop with Ctrl-C." if serve_with is None else ""),
        ]
    )


def v2_inputs(version: VersionInfo, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    datatypes = {"int64": "INT64", "float64": "FP64", "string": "BYTES", "bool": "BOOL"}
    return [
        {
            "name": column.name,
            "shape": [len(rows)],
            "datatype": datatypes[column.dtype],
            "data": [row[column.name] for row in rows],
        }
        for column in version.signature.columns
    ]


def _announce_when_ready(base: str, banner: str) -> None:
    import urllib.request  # with ssl and email: only when the demo serves

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    console.print(banner, highlight=False, soft_wrap=True, markup=False)
                    return
        except OSError:
            pass
        time.sleep(0.2)
