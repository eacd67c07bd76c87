"""Berth as a Ray Serve application: every replica runs the server's own ASGI app.

A replica builds `berth.server.create_app_from_env()` inside its own process, from the `BERTH_*`
variables of its runtime environment, so the API, authentication, rate limits, batching, metrics
and the rollout controller are exactly those of `berth serve`; Ray Serve only adds replicas and
spreads requests over them. The app's lifespan (model loading, background tasks) runs in each
replica when it starts and stops.

`build_app` is an application builder, the form Ray Serve's config files and KubeRay's
`serveConfigV2` name in `import_path` (`berth.deploy.ray_serve:build_app`), with `args` such as
`{"served": ["churn@production"], "min_replicas": 1, "max_replicas": 4}`; `berth serve --engine
ray` uses the same builder.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from ray import serve

from berth.deploy.ray_options import MULTIPROCESS_ENV, ReplicaOptions
from berth.errors import InvalidInput

if TYPE_CHECKING:
    from fastapi import FastAPI
    from ray.serve.deployment import Application, Deployment


@serve.ingress()
class BerthReplica:
    """One replica: the server's ASGI app, built in the replica's process after it starts."""

    async def __serve_build_asgi_app__(self) -> FastAPI:
        # The replicas of one machine sum their metrics in one folder (see ray_engine); on a
        # cluster node it does not exist until the first replica there makes it.
        shared = os.environ.get(MULTIPROCESS_ENV)
        if shared:
            os.makedirs(shared, exist_ok=True)
        # Imported here: the driver that deploys this class needs none of the serving stack.
        from berth.server import create_app_from_env

        return create_app_from_env()


def application(options: ReplicaOptions) -> Application:
    """The bound Serve application of one Berth server."""
    deployment: Deployment = serve.deployment(**options.deployment_options())(BerthReplica)
    return deployment.bind()


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for Ray Serve config files and KubeRay (`import_path`).

    `args` takes the fields of `ReplicaOptions` (except `env`) and `served`, the references to
    serve (default: what the replica's `BERTH_SERVED` says, else every `production` alias).
    Other settings reach replicas as `BERTH_*` variables of the cluster or the config's
    `runtime_env`.
    """
    known = {"served", *ReplicaOptions.__dataclass_fields__} - {"env"}
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidInput(f"unknown Berth application args {unknown}; use only {sorted(known)}")
    values = {name: value for name, value in args.items() if name != "served"}
    served = args.get("served")
    env = {"BERTH_SERVED": _json_list(served)} if served else {}
    return application(ReplicaOptions(**values, env=env))


def _json_list(served: Any) -> str:
    if isinstance(served, str):
        served = [served]
    if not isinstance(served, list) or not all(isinstance(ref, str) for ref in served):
        raise InvalidInput('args.served must be a list of references such as ["churn@production"]')
    return json.dumps(served)
