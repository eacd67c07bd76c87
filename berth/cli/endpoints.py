"""`berth endpoints ...`: create endpoints, set their routes by hand, add a shadow, watch them.

Each command prints from the JSON documents the admin API returns: in local mode it builds them
with the services (`to_dict()`), in remote mode it asks the server for them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from berth.cli.context import console, registry, remote
from berth.cli.remote import path as api
from berth.errors import InvalidInput
from berth.registry.roles import ROLES, SHADOW

# The endpoint and rollout services (SQLAlchemy) are imported by the commands that use them.
if TYPE_CHECKING:
    from berth.cli.remote import Remote
    from berth.registry.endpoints import EndpointService, RouteSpec

app = typer.Typer(
    help="Endpoints: the names clients call, and the versions (routes) behind them.",
    no_args_is_help=True,
)

_ROUTE_FORMAT = "LABEL=REF:WEIGHT[:ROLE], e.g. stable=churn:2:90 or canary=churn@staging:10"


def _service() -> EndpointService:
    from berth.registry.endpoints import EndpointService

    return EndpointService(registry())


@app.command("create")
def create(
    name: str = typer.Argument(..., help="The endpoint's name, e.g. churn."),
    model: str = typer.Option(
        ..., "--model", help="The version it serves: NAME, NAME:VERSION or NAME@ALIAS."
    ),
    sticky: str | None = typer.Option(
        None,
        help="Keep each caller on one version: header:NAME, cookie:NAME or field:NAME "
        "(a top-level field of the JSON body), e.g. header:X-User-ID.",
    ),
    description: str = typer.Option("", help="Free text."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Create an endpoint whose one stable route takes all traffic to a version.

    Clients then call /api/v1/endpoints/NAME/predict; change the version behind it with
    `berth rollout start`.

    Example: berth endpoints create churn --model churn@production --sticky header:X-User-ID
    """
    from berth.cli.flags import from_flags
    from berth.rollouts.requests import EndpointRequest
    from berth.store.audit import cli_actor

    asked = from_flags(
        EndpointRequest,
        {"name": "NAME", "model": "--model", "sticky": "--sticky", "description": "--description"},
        {"name": name, "model": model, "sticky": sticky, "description": description},
    )
    server = remote()
    if server is not None:
        info = server.post(api("endpoints"), asked.model_dump(mode="json", exclude_unset=True))
    else:
        info = (
            _service()
            .create(
                asked.name,
                asked.model,
                sticky=asked.sticky,
                description=asked.description,
                actor=cli_actor(),
            )
            .to_dict()
        )
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from berth.registry.endpoints import primary_route

    console.print(
        f"Created endpoint [bold]{info['name']}[/] serving {primary_route(_specs(info)).ref}; "
        f"call it at /api/v1/endpoints/{info['name']}/predict",
        highlight=False,
    )


@app.command("list")
def list_endpoints(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List endpoints with their routes.

    Example: berth endpoints list
    """
    from berth.registry.endpoints import routes_summary

    server = remote()
    if server is not None:
        found: list[dict[str, Any]] = server.get(api("endpoints"))["endpoints"]
    else:
        found = [e.to_dict() for e in _service().all()]
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    if not found:
        console.print("No endpoints yet; create one with `berth endpoints create NAME --model REF`")
        return
    table = Table("endpoint", "routes", "sticky", "updated")
    for info in found:
        table.add_row(
            info["name"],
            routes_summary(_specs(info)),
            info["sticky"] or "-",
            f"{_time(info['updated_at']):%Y-%m-%d %H:%M}",
        )
    console.print(table)


@app.command("show")
def show(
    name: str = typer.Argument(..., help="The endpoint's name."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show an endpoint: its routes, live traffic per version, shadow agreement, recent changes.

    Traffic counts are running totals since each serving process started, summed over every
    worker and replica that serves the endpoint.

    Example: berth endpoints show churn
    """
    server = remote()
    document = _remote_overview(server, name) if server is not None else _overview(name)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
        return
    info, stats, history = document["endpoint"], document["stats"], document["history"]
    sticky = info["sticky"] or "none (each request is routed at random)"
    console.print(f"[bold]{info['name']}[/]  sticky: {sticky}", highlight=False)
    if info["description"]:
        console.print(info["description"], highlight=False)
    rollout = document["rollout"]
    if rollout is not None:
        console.print(
            f"rollout {rollout['id']} {rollout['status']}: {rollout['strategy']} "
            f"{rollout['from']} → {rollout['to']} at {rollout['weight']:g}% "
            f"(`berth rollout status {name}`)",
            highlight=False,
        )
    console.print(_routes_table(info, stats))
    if stats["shadow"] is not None:
        console.print(_shadow_line(stats["shadow"]), highlight=False)
    if history:
        console.print(_history_table(history, f"last {len(history)} changes"))


def _overview(name: str) -> dict[str, Any]:
    """`endpoints show`'s document, from the services."""
    from berth.rollouts.service import RolloutService
    from berth.serving.route_stats import read_shadow, read_totals, stats_document

    service = _service()
    info = service.get(name)
    db = registry().db
    stats = stats_document(info, read_totals(db, name), read_shadow(db, name))
    active = RolloutService(registry()).list(name, active_only=True)
    return {
        "endpoint": info.to_dict(),
        "stats": stats,
        "history": [h.to_dict() for h in service.history(name, limit=_SHOWN_CHANGES)],
        "rollout": active[0].to_dict() if active else None,
    }


def _remote_overview(server: Remote, name: str) -> dict[str, Any]:
    """`endpoints show`'s document, from the server's routes."""
    info = server.get(api("endpoints", name))
    stats = server.get(api("endpoints", name, "stats"))
    history = server.get(api("endpoints", name, "history"), {"limit": _SHOWN_CHANGES})
    active = server.get(api("rollouts"), {"endpoint": name, "active": "true"})["rollouts"]
    return {
        "endpoint": info,
        "stats": {"versions": stats["versions"], "shadow": stats["shadow"]},
        "history": history["history"],
        "rollout": active[0] if active else None,
    }


@app.command("history")
def history(
    name: str = typer.Argument(..., help="The endpoint's name."),
    limit: int = typer.Option(20, min=1, max=1000, help="At most this many changes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every change of an endpoint's routes, newest first: when, who, why and the new routes.

    Example: berth endpoints history churn --limit 50
    """
    server = remote()
    if server is not None:
        changes = server.get(api("endpoints", name, "history"), {"limit": limit})["history"]
    else:
        changes = [c.to_dict() for c in _service().history(name, limit=limit)]
    if as_json:
        typer.echo(json.dumps(changes, indent=2))
        return
    if not changes:
        console.print(f"no changes recorded for endpoint '{name}'", highlight=False)
        return
    console.print(_history_table(changes))


@app.command("delete")
def delete(name: str = typer.Argument(..., help="The endpoint's name.")) -> None:
    """Delete an endpoint: its clients get 404 once servers refresh. Its history is kept.

    Refused while a rollout or an experiment runs on it.

    Example: berth endpoints delete churn
    """
    from berth.store.audit import cli_actor

    server = remote()
    if server is not None:
        server.delete(api("endpoints", name))
    else:
        _service().delete(name, actor=cli_actor())
    console.print(f"Deleted endpoint {name}", highlight=False)


@app.command("routes")
def routes(
    name: str = typer.Argument(..., help="The endpoint's name."),
    route: list[str] = typer.Option(
        None,
        "--route",
        help=f"{_ROUTE_FORMAT} (repeatable). ROLE defaults to stable for the label stable, "
        f"shadow for the label shadow, else canary; roles: {', '.join(ROLES)}. Without "
        "--route, the current routes are printed.",
    ),
    reason: str = typer.Option("set by hand", help="Why, for the endpoint's history."),
    sticky: str | None = typer.Option(
        None, help="Also change the sticky key: header:NAME, cookie:NAME or field:NAME."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Print an endpoint's routes, or replace them by hand with --route. The weights of serving
    routes must add up to 100.

    Replacing is refused while a rollout or an experiment owns the routes; a rollout is the
    safer way to move traffic to a new version, since it rolls back on bad evidence.

    Example: berth endpoints routes churn --route stable=churn:2:90 --route canary=churn:3:10
    """
    from berth.cli.flags import from_flags
    from berth.rollouts.requests import RoutesRequest
    from berth.store.audit import cli_actor

    server = remote()
    if not route:
        if sticky is not None:
            raise InvalidInput("--sticky changes the routes: pass the --route options too")
        found = (
            server.get(api("endpoints", name))
            if server is not None
            else _service().get(name).to_dict()
        )
        _print_changed(found, as_json)
        return
    routes = []
    for label, ref, weight, role in (parse_route(text) for text in route):
        model, number = _version(server, ref)
        routes.append({"label": label, "role": role, "model": model, "version": number,
                       "weight": weight})  # fmt: skip
    asked = from_flags(
        RoutesRequest,
        {"routes": "--route", "reason": "--reason", "sticky": "--sticky"},
        {"routes": routes, "reason": reason, "sticky": sticky},
    )
    if server is not None:
        body = asked.model_dump(mode="json", exclude_unset=True)
        changed = server.put(api("endpoints", name, "routes"), body)
    else:
        changed = (
            _service()
            .set_routes(name, asked.specs(), asked.reason, actor=cli_actor(), sticky=asked.sticky)
            .to_dict()
        )
    _print_changed(changed, as_json)


def _version(server: Remote | None, reference: str) -> tuple[str, int]:
    """The model and version number a reference names, resolved as the registry does."""
    if server is None:
        version = registry().resolve(reference)
        return version.model, version.number
    found = server.version(reference)
    return str(found["model"]), int(found["version"])


@app.command("shadow")
def shadow(
    name: str = typer.Argument(..., help="The endpoint's name."),
    to: str | None = typer.Option(
        None, "--to", help="The version to mirror traffic to: NAME:VERSION or NAME@ALIAS."
    ),
    percent: float = typer.Option(
        10.0, min=0.0, max=100.0, help="Share of requests copied to the shadow, in percent."
    ),
    off: bool = typer.Option(False, "--off", help="Remove the shadow route."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Mirror a share of an endpoint's requests to another version, or stop mirroring.

    The shadow's answers are never returned; they are compared with the served ones, and
    `berth endpoints show` reports how often they agree and the latency difference. The other
    routes are kept as they are.

    Example: berth endpoints shadow churn --to churn:4 --percent 10
    """
    from berth.cli.flags import from_flags
    from berth.rollouts.requests import ShadowRequest
    from berth.store.audit import cli_actor

    if off == (to is not None):
        raise InvalidInput(
            "give either --to REF to mirror traffic to a version, or --off to stop mirroring"
        )
    server = remote()
    if off:
        if server is not None:
            info = server.delete(api("endpoints", name, "shadow"))
        else:
            info = _service().remove_shadow(name, actor=cli_actor()).to_dict()
        _print_changed(info, as_json)
        return
    asked = from_flags(
        ShadowRequest, {"to": "--to", "percent": "--percent"}, {"to": to, "percent": percent}
    )
    if server is not None:
        body = asked.model_dump(mode="json", exclude_unset=True)
        info = server.put(api("endpoints", name, "shadow"), body)
    else:
        info = _service().set_shadow(name, asked.to, asked.percent, actor=cli_actor()).to_dict()
    _print_changed(info, as_json)


# parsing -------------------------------------------------------------------------------------


def parse_route(text: str) -> tuple[str, str, float, str | None]:
    """'canary=churn:3:10:variant' -> ('canary', 'churn:3', 10.0, 'variant'); without a role,
    the role is None (the route request's default for the label).

    The reference itself may hold a colon (churn:3), so the fields are read from the right: an
    optional role (never a number), then the weight, and what is left is the reference.
    """
    label, equals, rest = text.partition("=")
    parts = rest.split(":")
    if not equals or not label.strip() or len(parts) < 2:
        raise InvalidInput(f"--route '{text}' is not {_ROUTE_FORMAT}")
    role = None
    if not _is_number(parts[-1]):
        role = parts.pop().strip()
    if len(parts) < 2 or not _is_number(parts[-1]):
        raise InvalidInput(f"--route '{text}' has no weight; write {_ROUTE_FORMAT}")
    weight = float(parts.pop())
    label = label.strip()
    return label, ":".join(parts).strip(), weight, role or None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# output --------------------------------------------------------------------------------------

_SHOWN_CHANGES = 5
"""Changes `endpoints show` lists."""


def _specs(info: dict[str, Any]) -> list[RouteSpec]:
    """The routes of an endpoint's document (`EndpointInfo.to_dict()`, as the API answers)."""
    from berth.registry.endpoints import RouteSpec

    return [RouteSpec.from_dict(r) for r in info["routes"]]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _routes_table(info: dict[str, Any], stats: dict[str, Any]) -> Table:
    """Each route with its live traffic (the stats document lists the routes in order)."""
    table = Table(
        "label",
        "role",
        "version",
        "weight",
        "requests",
        "errors",
        "error rate",
        "p99 ms",
        title="routes and live traffic (totals since each server started)",
    )
    for route, window in zip(_specs(info), stats["versions"], strict=True):
        rate, p99 = window["error_rate"], window["p99_ms"]
        table.add_row(
            route.label,
            route.role,
            route.ref,
            f"{route.weight:g}%" + (" mirrored" if route.role == SHADOW else ""),
            str(window["requests"]),
            str(window["errors"]),
            "-" if rate is None else f"{rate:.2%}",
            "-" if p99 is None else f"{p99:.1f}",
        )
    return table


def _shadow_line(shadow: dict[str, Any]) -> str:
    ref = f"{shadow['model']}:{shadow['version']}"
    if shadow["compared"] == 0:
        return f"shadow {ref}: no mirrored requests compared yet"
    agreement, delta = shadow["agreement"], shadow["mean_latency_delta_ms"]
    shown = "-" if agreement is None else f"{agreement:.1%}"
    slower = "" if delta is None else f", {delta:+.1f} ms mean latency vs the served version"
    return f"shadow {ref}: agrees on {shown} of {shadow['compared']} compared requests{slower}"


def _history_table(changes: list[dict[str, Any]], title: str | None = None) -> Table:
    from berth.registry.endpoints import routes_summary

    table = Table("at", "actor", "reason", "routes", title=title)
    for change in changes:
        table.add_row(
            f"{_time(change['at']):%Y-%m-%d %H:%M:%S}",
            change["actor"],
            change["reason"],
            routes_summary(_specs(change)) or "-",
        )
    return table


def _print_changed(info: dict[str, Any], as_json: bool) -> None:
    from berth.registry.endpoints import routes_summary

    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    console.print(f"{info['name']}: {routes_summary(_specs(info))}", highlight=False)
