"""`berth endpoints ...`: create endpoints, set their routes by hand, add a shadow, watch them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from berth.cli.context import console, registry
from berth.errors import InvalidInput
from berth.registry.roles import ROLES

# The endpoint and rollout services (SQLAlchemy) are imported by the commands that use them.
if TYPE_CHECKING:
    from berth.registry.endpoints import EndpointChange, EndpointInfo, EndpointService, RouteSpec
    from berth.serving.route_stats import ShadowTotals
    from berth.serving.route_window import RouteWindow

app = typer.Typer(
    help="Endpoints: the names clients call, and the versions (routes) behind them.",
    no_args_is_help=True,
)

SHADOW = "shadow"
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
    info = _service().create(
        asked.name,
        asked.model,
        sticky=asked.sticky,
        description=asked.description,
        actor=cli_actor(),
    )
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    console.print(
        f"Created endpoint [bold]{info.name}[/] serving {info.primary.ref}; call it at "
        f"/api/v1/endpoints/{info.name}/predict",
        highlight=False,
    )


@app.command("list")
def list_endpoints(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List endpoints with their routes.

    Example: berth endpoints list
    """
    from berth.registry.endpoints import routes_summary

    found = _service().all()
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in found], indent=2))
        return
    if not found:
        console.print("No endpoints yet; create one with `berth endpoints create NAME --model REF`")
        return
    table = Table("endpoint", "routes", "sticky", "updated")
    for info in found:
        table.add_row(
            info.name,
            routes_summary(info.routes),
            str(info.sticky) if info.sticky else "-",
            f"{info.updated_at:%Y-%m-%d %H:%M}",
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
    from berth.rollouts.service import RolloutService
    from berth.serving.route_stats import read_shadow, read_totals, stats_document

    service = _service()
    info = service.get(name)
    db = registry().db
    totals = read_totals(db, name)
    shadows = read_shadow(db, name)
    history = service.history(name, limit=5)
    active = RolloutService(registry()).list(name, active_only=True)
    if as_json:
        document = {
            "endpoint": info.to_dict(),
            "stats": stats_document(info, totals, shadows),
            "history": [h.to_dict() for h in history],
            "rollout": active[0].to_dict() if active else None,
        }
        typer.echo(json.dumps(document, indent=2))
        return
    sticky = str(info.sticky) if info.sticky else "none (each request is routed at random)"
    console.print(f"[bold]{info.name}[/]  sticky: {sticky}", highlight=False)
    if info.description:
        console.print(info.description, highlight=False)
    if active:
        rollout = active[0]
        console.print(
            f"rollout {rollout.id} {rollout.status}: {rollout.strategy} {rollout.from_ref} → "
            f"{rollout.to_ref} at {rollout.weight:g}% (`berth rollout status {name}`)",
            highlight=False,
        )
    console.print(_routes_table(info, totals))
    shadow = info.with_role(SHADOW)
    if shadow is not None:
        found = shadows.get((shadow.model, shadow.version))
        console.print(_shadow_line(shadow, found), highlight=False)
    if history:
        console.print(_history_table(history, f"last {len(history)} changes"))


@app.command("history")
def history(
    name: str = typer.Argument(..., help="The endpoint's name."),
    limit: int = typer.Option(20, min=1, max=1000, help="At most this many changes."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Every change of an endpoint's routes, newest first: when, who, why and the new routes.

    Example: berth endpoints history churn --limit 50
    """
    changes = _service().history(name, limit=limit)
    if as_json:
        typer.echo(json.dumps([c.to_dict() for c in changes], indent=2))
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

    if not route:
        if sticky is not None:
            raise InvalidInput("--sticky changes the routes: pass the --route options too")
        _print_changed(_service().get(name), as_json)
        return
    routes = []
    for label, ref, weight, role in (parse_route(text) for text in route):
        version = registry().resolve(ref)
        routes.append({"label": label, "role": role, "model": version.model,
                       "version": version.number, "weight": weight})  # fmt: skip
    asked = from_flags(
        RoutesRequest,
        {"routes": "--route", "reason": "--reason", "sticky": "--sticky"},
        {"routes": routes, "reason": reason, "sticky": sticky},
    )
    info = _service().set_routes(
        name, asked.specs(), asked.reason, actor=cli_actor(), sticky=asked.sticky
    )
    _print_changed(info, as_json)


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
    from berth.registry.endpoints import resolve_spec
    from berth.store.audit import cli_actor

    if off == (to is not None):
        raise InvalidInput(
            "give either --to REF to mirror traffic to a version, or --off to stop mirroring"
        )
    service = _service()
    current = service.get(name)
    kept = [r for r in current.routes if r.role != SHADOW]
    if off:
        if len(kept) == len(current.routes):
            raise InvalidInput(f"endpoint '{name}' has no shadow route; nothing to turn off")
        info = service.set_routes(name, kept, "shadow removed", actor=cli_actor())
    else:
        assert to is not None
        spec = resolve_spec(registry(), to, SHADOW, SHADOW, percent)
        if any(r.label == SHADOW for r in kept):
            raise InvalidInput(
                f"endpoint '{name}' has a serving route labelled '{SHADOW}'; rename it with "
                "`berth endpoints routes` first"
            )
        reason = f"shadow {spec.ref} on {percent:g}% of requests"
        info = service.set_routes(name, [*kept, spec], reason, actor=cli_actor())
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


def _routes_table(info: EndpointInfo, totals: dict[tuple[str, int], RouteWindow]) -> Table:
    from berth.serving.route_window import RouteWindow

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
    for route in info.routes:
        window = totals.get((route.model, route.version), RouteWindow())
        rate, p99 = window.error_rate, window.latency_quantile(0.99)
        table.add_row(
            route.label,
            route.role,
            route.ref,
            f"{route.weight:g}%" + (" mirrored" if route.role == SHADOW else ""),
            str(window.requests),
            str(window.errors),
            "-" if rate is None else f"{rate:.2%}",
            "-" if p99 is None else f"{p99 * 1000:.1f}",
        )
    return table


def _shadow_line(shadow: RouteSpec, found: ShadowTotals | None) -> str:
    if found is None or found.compared == 0:
        return f"shadow {shadow.ref}: no mirrored requests compared yet"
    agreement = found.agreement
    delta = found.mean_delta_ms
    shown = "-" if agreement is None else f"{agreement:.1%}"
    slower = "" if delta is None else f", {delta:+.1f} ms mean latency vs the served version"
    return f"shadow {shadow.ref}: agrees on {shown} of {found.compared} compared requests{slower}"


def _history_table(changes: list[EndpointChange], title: str | None = None) -> Table:
    from berth.registry.endpoints import routes_summary

    table = Table("at", "actor", "reason", "routes", title=title)
    for change in changes:
        table.add_row(
            f"{change.at:%Y-%m-%d %H:%M:%S}",
            change.actor,
            change.reason,
            routes_summary(change.routes) or "-",
        )
    return table


def _print_changed(info: EndpointInfo, as_json: bool) -> None:
    from berth.registry.endpoints import routes_summary

    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2))
        return
    console.print(f"{info.name}: {routes_summary(info.routes)}", highlight=False)
