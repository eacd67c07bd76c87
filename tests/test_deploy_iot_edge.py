"""`berth build --target iot-edge`: the Azure IoT Edge deployment manifest, checked offline.

The manifest is validated against SchemaStore's IoT Edge schemas vendored in
berth/deploy/schemas/ (see its README): by `jsonschema` here, and by `check-jsonschema` as a
separate tool, in a subprocess whose proxies point at a closed port (so nothing is fetched).
What a schema cannot say is asserted directly: `createOptions` strings parse as JSON objects,
stay within edgeAgent's 512-character chunks and IoT Hub's 32 KB twin, and carry the build's
limits. The bundles come from tests/test_deploy_build.py's fixtures: `built` (churn@production
for every target, --cpu 0.75 --memory 768Mi) and `cli` (the command in local and remote mode).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest

from berth.config import Settings
from berth.deploy.build import build
from berth.deploy.iot_edge import (
    MANIFEST,
    PASSWORD_PLACEHOLDER,
    create_options_fields,
    memory_bytes,
)
from berth.deploy.iot_edge_options import EdgeOptions, check_module_name, registry_host
from berth.deploy.iot_edge_schema import (
    DEPLOYMENT_SCHEMA,
    SCHEMAS,
    TWIN_SCHEMAS,
    check,
    create_options,
    create_options_problems,
    problems,
)
from berth.deploy.plan import TARGETS, BuildOptions, dns_label
from berth.deploy.source import RegistrySource
from berth.errors import InvalidInput
from berth.registry.service import Registry
from tests import test_deploy_build
from tests.conftest import Run, register_churn
from tests.test_deploy_build import Built

built = test_deploy_build.built
"""churn@production built for every target (--cpu 0.75 --memory 768Mi), once for this module."""
cli = test_deploy_build.cli
"""The command in local and remote mode, with churn@production and the endpoint `checkout`."""
MODULE = "berth-churn"


def manifest_of(out: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((out / MANIFEST).read_text())
    return loaded


def agent(manifest: dict[str, Any]) -> dict[str, Any]:
    desired: dict[str, Any] = manifest["modulesContent"]["$edgeAgent"]["properties.desired"]
    return desired


def hub(manifest: dict[str, Any]) -> dict[str, Any]:
    desired: dict[str, Any] = manifest["modulesContent"]["$edgeHub"]["properties.desired"]
    return desired


def options_of(settings: dict[str, Any]) -> dict[str, Any]:
    """A module's createOptions, put back together from its chunks and parsed."""
    text = create_options(settings)
    assert text is not None
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def schema_errors(name: str, document: Any) -> list[str]:
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft4Validator.check_schema(schema)
    return [e.message for e in jsonschema.Draft4Validator(schema).iter_errors(document)]


def check_jsonschema(schema: Path, document: Path) -> subprocess.CompletedProcess[str]:
    """check-jsonschema against a local schema file, unable to reach any network."""
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": closed, "HTTPS_PROXY": closed, "NO_PROXY": ""}
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), str(document)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip


# the manifest of a full build ----------------------------------------------------------------


def test_every_target_includes_iot_edge_and_its_manifest_passes_the_schemas(
    built: Built, tmp_path: Path
) -> None:
    assert "iot-edge" in TARGETS
    assert MANIFEST in built.result.files
    manifest = manifest_of(built.out)
    assert schema_errors(DEPLOYMENT_SCHEMA, manifest) == []
    for (twin, version), name in TWIN_SCHEMAS.items():
        assert version == "1.1"
        assert schema_errors(name, {twin: manifest["modulesContent"][twin]}) == []
        assert manifest["modulesContent"][twin]["properties.desired"]["schemaVersion"] == version
    assert problems(manifest) == []
    checked = check_jsonschema(SCHEMAS / DEPLOYMENT_SCHEMA, built.out / MANIFEST)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "validation done" in checked.stdout
    # The same tool refuses a manifest IoT Edge would refuse: createOptions as an object.
    broken = json.loads(json.dumps(manifest))
    settings = agent(broken)["modules"][MODULE]["settings"]
    settings["createOptions"] = json.loads(settings["createOptions"])
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    refused = check_jsonschema(SCHEMAS / DEPLOYMENT_SCHEMA, tmp_path / "broken.json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "createOptions" in refused.stdout


def test_the_module_runs_the_image_with_the_builds_limits(built: Built) -> None:
    manifest = manifest_of(built.out)
    plan = built.result.plan
    (name,) = agent(manifest)["modules"]
    assert name == MODULE == plan.app
    module = agent(manifest)["modules"][MODULE]
    assert module["type"] == "docker"
    assert module["status"] == "running"
    assert module["restartPolicy"] == "always"
    assert module["version"] == plan.image_tag == "1"
    assert module["settings"]["image"] == plan.image == "berth-churn:1"
    assert module["env"] == {key: {"value": value} for key, value in plan.settings().items()}
    assert module["env"]["BERTH_PORT"] == {"value": "8321"}
    for key, value in module["settings"].items():
        if key.startswith("createOptions"):
            assert isinstance(value, str)
            assert len(value) <= 512
    created = options_of(module["settings"])
    host = created["HostConfig"]
    # --cpu 0.75: the Kubernetes limit is 1500m, here 1.5 CPUs; --memory 768Mi, no swap on top.
    assert host["NanoCpus"] == 1_500_000_000
    assert host["Memory"] == host["MemorySwap"] == 768 * 2**20
    assert created["ExposedPorts"] == {"8321/tcp": {}, "8322/tcp": {}}
    assert host["PortBindings"] == {
        "8321/tcp": [{"HostPort": "8321"}],
        "8322/tcp": [{"HostPort": "8322"}],
    }
    assert host["Binds"] == [f"{MODULE}-data:/var/lib/berth"]
    assert host["ReadonlyRootfs"] is True
    assert host["Tmpfs"] == {"/tmp": ""}
    assert host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["LogConfig"]["Config"] == {"max-size": "10m", "max-file": "3"}
    # An image without a registry host: nothing to log in to, and no secret anywhere.
    assert "registryCredentials" not in agent(manifest)["runtime"]["settings"]
    assert built.server_secret.decode() not in (built.out / MANIFEST).read_text()


def test_the_runtime_modules_and_the_route_upstream(built: Built) -> None:
    manifest = manifest_of(built.out)
    desired = agent(manifest)
    assert desired["runtime"] == {"type": "docker", "settings": {"minDockerVersion": "v1.25"}}
    system = desired["systemModules"]
    assert system["edgeAgent"]["settings"]["image"] == "mcr.microsoft.com/azureiotedge-agent:1.5"
    assert options_of(system["edgeAgent"]["settings"]) == {}
    edge_hub = system["edgeHub"]
    assert edge_hub["settings"]["image"] == "mcr.microsoft.com/azureiotedge-hub:1.5"
    assert (edge_hub["status"], edge_hub["restartPolicy"]) == ("running", "always")
    assert options_of(edge_hub["settings"])["HostConfig"]["PortBindings"] == {
        f"{port}/tcp": [{"HostPort": str(port)}] for port in (5671, 8883, 443)
    }
    assert hub(manifest)["routes"] == {
        f"{MODULE}-to-upstream": {
            "route": f"FROM /messages/modules/{MODULE}/outputs/* INTO $upstream",
            "priority": 0,
            "timeToLiveSecs": 7200,
        }
    }
    assert hub(manifest)["storeAndForwardConfiguration"] == {"timeToLiveSecs": 7200}
    for twin in ("$edgeAgent", "$edgeHub"):
        desired_twin = manifest["modulesContent"][twin]["properties.desired"]
        assert len(json.dumps(desired_twin, separators=(",", ":"))) < 32 * 1024


def test_the_readme_says_how_to_deploy_and_how_to_build_for_arm64(built: Built) -> None:
    readme = (built.out / "README.md").read_text()
    section = readme[readme.index("## Azure IoT Edge") :]
    assert (
        "az iot edge set-modules --device-id DEVICE --hub-name HUB --content "
        "iot-edge/deployment.json" in section
    )
    assert "### ARM64 devices" in section
    assert "docker buildx build --platform linux/arm64 -t berth-churn:1 --push ." in section
    assert "onnxruntime" in section
    assert "aarch64" in section
    assert "exec format error" in section  # what a tag of the wrong architecture does
    assert "1.5 CPU(s)" in section
    assert "768Mi" in section
    assert f"sudo docker exec {MODULE} berth keys create" in section
    assert "anonymously" in section  # no --edge-registry-user


# the command ---------------------------------------------------------------------------------


def test_the_command_writes_the_manifest_with_the_edge_options(cli: Run, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    done = cli("build", "churn@production", "--out", str(out), "--target", "iot-edge",
               "--image", "myacr.azurecr.io/ml/churn:2026-01", "--port", "9100",
               "--grpc-port", "0", "--edge-module", "churn-edge", "--edge-restart-policy", "on-unhealthy",
               "--edge-registry-user", "myacr")  # fmt: skip
    assert done.code == 0, done.err
    assert "iot-edge/deployment.json" in done.out
    assert not (out / "compose.yaml").exists()
    assert not (out / "kubernetes").exists()
    manifest = manifest_of(out)
    assert problems(manifest) == []
    module = agent(manifest)["modules"]["churn-edge"]
    assert module["restartPolicy"] == "on-unhealthy"
    assert module["settings"]["image"] == "myacr.azurecr.io/ml/churn:2026-01"
    assert options_of(module["settings"])["HostConfig"]["PortBindings"] == {
        "9100/tcp": [{"HostPort": "9100"}]
    }
    assert agent(manifest)["runtime"]["settings"]["registryCredentials"] == {
        "myacr-azurecr-io": {
            "username": "myacr",
            "password": PASSWORD_PLACEHOLDER,
            "address": "myacr.azurecr.io",
        }
    }
    assert "FROM /messages/modules/churn-edge/outputs/*" in json.dumps(hub(manifest))
    readme = (out / "README.md").read_text()
    assert '.registryCredentials["myacr-azurecr-io"].password = $password' in readme
    assert "--content deployment.with-password.json" in readme
    # --force replaces what a previous build wrote, the manifest folder included.
    again = cli("build", "churn@production", "--out", str(out), "--target", "compose", "--force")
    assert again.code == 0, again.err
    assert not (out / "iot-edge").exists()
    assert (out / "compose.yaml").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["checkout", "--target", "iot-edge"], "'checkout' is an endpoint"),
        (["churn", "--target", "iot-edge", "--model-source", "registry"],
         "drop --model-source registry"),
        (["churn", "--target", "iot-edge", "--edge-module", "churn_model"],
         "cannot name an IoT Edge module"),
        (["churn", "--target", "iot-edge", "--edge-module", "edgeHub"],
         "a module of the IoT Edge runtime"),
        (["churn", "--target", "iot-edge", "--edge-registry-user", "me"],
         "names no registry host"),
        (["churn", "--target", "iot-edge", "--edge-registry-user", "a b",
          "--image", "r.example.com/churn:1"], "without spaces"),
        (["churn", "--target", "iot-edge", "--memory", "1Mi"], "6 MB"),
        (["churn", "--edge-restart-policy", "never"], "add --target iot-edge"),
    ],
)  # fmt: skip
def test_the_command_refuses_in_one_line_what_a_device_cannot_run(
    cli: Run, tmp_path: Path, args: list[str], message: str
) -> None:
    done = cli("build", *args, "--out", str(tmp_path / "b"))
    assert done.code == 1, done.out
    assert message in done.err
    assert len(done.err.strip().splitlines()) == 1, done.err
    assert not (tmp_path / "b").exists()


def test_an_unknown_restart_policy_is_refused_by_name(cli: Run, tmp_path: Path) -> None:
    done = cli("build", "churn", "--out", str(tmp_path / "b"), "--target", "iot-edge",
               "--edge-restart-policy", "sometimes")  # fmt: skip
    assert done.code != 0
    assert "'sometimes' is not one of" in done.err
    assert not (tmp_path / "b").exists()


def test_without_jsonschema_the_build_says_how_to_install_it(
    settings: Settings,
    churn_files: tuple[Path, Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = Registry.from_settings(settings)
    register_churn(registry, churn_files)
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # `import jsonschema` now fails
    with pytest.raises(InvalidInput, match=r"pip install 'berth\[iot-edge\]'"):
        build(
            RegistrySource(registry),
            "churn@production",
            tmp_path / "b",
            BuildOptions(targets=("iot-edge",)),
        )
    registry.db.dispose()
    assert not (tmp_path / "b").exists()


# the checks, on manifests the build would never write -------------------------------------------


@pytest.fixture
def good(built: Built) -> dict[str, Any]:
    return manifest_of(built.out)


def _module(manifest: dict[str, Any]) -> dict[str, Any]:
    module: dict[str, Any] = agent(manifest)["modules"][MODULE]
    return module


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (lambda m: _module(m).update(restartPolicy="sometimes"), "'sometimes' is not one of"),
        (lambda m: _module(m)["settings"].update(createOptions={"HostConfig": {}}),
         "is not of type 'string'"),
        (lambda m: _module(m)["settings"].update(createOptions='{"HostConfig": '),
         "createOptions is not JSON"),
        (lambda m: _module(m)["settings"].update(createOptions="[1, 2]"),
         "createOptions is JSON but not an object"),
        (lambda m: _module(m)["settings"].update(createOptions="{" + " " * 600 + "}"),
         "at most 512 per chunk"),
        (lambda m: _module(m)["settings"].update(createOptions02="{}"),
         "are not createOptions, createOptions01"),
        (lambda m: agent(m)["modules"].update({"bad.name": _module(m)}), "bad.name"),
        (lambda m: _module(m)["env"].update(BIG={"value": "x" * 40_000}), "over IoT Hub's 32 KB"),
        (lambda m: hub(m).update(schemaVersion="9.9"), "no schema for schemaVersion 9.9"),
        (lambda m: hub(m).pop("routes"), "'routes' is a required property"),
    ],
)  # fmt: skip
def test_the_check_names_what_iot_edge_would_refuse(
    good: dict[str, Any], spoil: Any, expected: str
) -> None:
    assert problems(good) == []
    spoil(good)
    found = problems(good)
    assert any(expected in problem for problem in found), found
    with pytest.raises(InvalidInput) as refused:
        check(good)
    assert "nothing was written" in refused.value.message
    assert "\n" not in refused.value.message


def test_long_create_options_are_chunked_as_edge_agent_joins_them() -> None:
    options = {"Env": [f"VARIABLE_{i}={'v' * 30}" for i in range(40)]}
    fields = create_options_fields(options)
    assert list(fields) == [
        "createOptions",
        *(f"createOptions{i:02d}" for i in range(1, len(fields))),
    ]
    assert 2 < len(fields) <= 8
    assert all(len(chunk) <= 512 for chunk in fields.values())
    assert json.loads(create_options(fields) or "") == options
    assert create_options_problems({"image": "x:1", **fields}) == []
    with pytest.raises(InvalidInput, match="over IoT Edge's 4,096"):
        create_options_fields({"Env": ["x" * 5000]})


def test_memory_quantities_become_bytes() -> None:
    assert memory_bytes("768Mi") == 805_306_368
    assert memory_bytes("1.5Gi") == 1_610_612_736
    assert memory_bytes("512M") == 512_000_000
    assert memory_bytes("2G") == 2_000_000_000
    assert memory_bytes("1073741824") == 2**30
    with pytest.raises(InvalidInput, match="6 MB"):
        memory_bytes("5Mi")


def test_module_names_follow_iot_edge_docker_and_dns() -> None:
    for name in ("berth-churn", "ChurnModel", "a", "a" * 63):
        assert check_module_name(name) == name
    for name in ("churn_model", "-churn", "churn-", "1churn", "a" * 64, "$edgeAgent", "EDGEHUB",
                 "churn.model", ""):  # fmt: skip
        with pytest.raises(InvalidInput):
            check_module_name(name)
    # The default, derived from any registered name, always passes.
    for registered in ("Churn_V2", "9lives", "fraud.detector", "x" * 80):
        check_module_name(dns_label(f"berth-{registered}", 40))
    with pytest.raises(InvalidInput, match="--edge-restart-policy"):
        EdgeOptions(restart_policy="sometimes")  # type: ignore[arg-type]


def test_registry_hosts_are_read_as_docker_reads_image_references() -> None:
    assert registry_host("myacr.azurecr.io/ml/churn:1") == "myacr.azurecr.io"
    assert registry_host("localhost:5000/churn:1") == "localhost:5000"
    assert registry_host("localhost/churn:1") == "localhost"
    assert registry_host("docker.io/team/churn:1") == "docker.io"
    assert registry_host("team/churn:1") is None  # Docker Hub, without saying so
    assert registry_host("berth-churn:1") is None
