"""Deployment files parse, pass the API schemas, and the commands they run are ones our CLIs accept.

No Docker engine or cluster runs here: the images and manifests themselves are
not exercised, only what can be checked from the files:

- Kubernetes resources against the Kubernetes 1.30 API schema (kubernetes-validate,
  strict: an unknown field is an error).
- KServe resources (InferenceService, ServingRuntime) against the field tables of
  the KServe Python SDK's generated API models (``openapi_types`` and
  ``attribute_map`` of ``kserve.models``, generated from KServe's CRD types), read
  from the SDK's wheel without importing it (its dependencies pin protobuf below 7,
  which this project's cannot share); the Kubernetes types they embed (containers,
  volumes, probes, metadata) against the Kubernetes schema as above. Also strict.
- tritonserver's arguments against the options of the tritonserver binary that the
  test suite runs (from the nvidia-pytriton wheel), where it is installed.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from cloud_server.cli import build_parser as cloud_parser  # noqa: E402
from cloud_server.server import KEEPALIVE_PERMIT_OPTIONS  # noqa: E402
from edge_client.cli import build_parser as edge_parser  # noqa: E402
from shared_model.training.cli import build_parser as train_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
KUBERNETES_VERSION = "1.30"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _json_list(dockerfile: str, instruction: str) -> list[str]:
    match = re.search(rf"^{instruction} (\[.*\])$", dockerfile, re.MULTILINE)
    assert match, f"no {instruction} in exec form"
    return yaml.safe_load(match.group(1))


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _by_kind(path: Path) -> dict[str, dict]:
    documents = _documents(path)
    kinds = {d["kind"]: d for d in documents}
    assert len(kinds) == len(documents), f"{path.name}: one resource per kind expected"
    return kinds


def _options(args: list[str]) -> dict[str, str]:
    """``--name=value`` arguments (the form tritonserver is given here) as a dict."""
    options = {}
    for arg in args:
        match = re.fullmatch(r"--([a-z0-9-]+)=(.*)", arg)
        assert match, f"tritonserver argument not in --name=value form: {arg!r}"
        assert match.group(1) not in options, f"--{match.group(1)} given twice"
        options[match.group(1)] = match.group(2)
    return options


# --- Dockerfiles and compose --------------------------------------------------------------------


@pytest.mark.parametrize("name, parser, script", [("Dockerfile.cloud", cloud_parser, "fer-cloud"), ("Dockerfile.edge", edge_parser, "fer-edge")])
def test_dockerfiles_run_as_non_root_with_health_checks_and_valid_commands(name: str, parser, script: str) -> None:
    text = (ROOT / "deploy" / name).read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert _json_list(text, "ENTRYPOINT") == [script]
    parser().parse_args(_json_list(text, "CMD"))
    health = _json_list(text, "HEALTHCHECK --interval=\\S+ --timeout=\\S+ --start-period=\\S+(?: --retries=\\d+)? CMD")
    assert health[0] == script
    parser().parse_args(health[1:])


def _triton_image() -> tuple[str, dict[str, str], Path]:
    """Dockerfile.triton: its text, tritonserver's options in CMD, and where the image holds the repository."""
    text = (DEPLOY / "Dockerfile.triton").read_text()
    exports = re.findall(r"^RUN (fer-train export .*)$", text, re.MULTILINE)
    assert len(exports) == 1, "Dockerfile.triton should generate the model repository once, with fer-train export"
    export = train_parser().parse_args(exports[0].split()[1:])
    assert export.command == "export" and export.triton
    # Generated in the first stage (PyTorch), copied into the served stage as it is.
    stage = re.search(r"^FROM \S+ AS (\w+)$", text, re.MULTILINE)
    assert stage and text.index(stage.group(0)) < text.index(exports[0])
    copied = re.search(rf"^COPY --from={stage.group(1)} (\S+) (\S+)$", text, re.MULTILINE)
    assert copied and Path(copied.group(1)) == Path(export.out), "the served stage should copy the exported folder"
    return text, _options(_json_list(text, "CMD")), Path(copied.group(2)) / "triton"


def _served_stage(text: str) -> str:
    return text[text.rindex("\nFROM ") :]


def test_triton_image_serves_the_repository_it_generates_from_a_python_its_backend_stub_can_run() -> None:
    text, options, repository = _triton_image()
    served = _served_stage(text)
    assert re.search(r"^USER (?!root)\w+", served, re.MULTILINE)
    assert _json_list(text, "ENTRYPOINT") == ["tritonserver"]
    assert Path(options["model-repository"]) == repository
    # The stub for the image's Python (3.11, as pyproject requires) in the backend directory; NumPy 1,
    # which the wheel's stub was built against; the project's models need no PyTorch there.
    assert re.search(r"^FROM python:3\.11\S*$", served, re.MULTILINE)
    stub = re.search(r"python_backend_stubs/(\d+\.\d+)/triton_python_backend_stub (\S+)", served)
    assert stub and stub.group(1) == "3.11" and Path(stub.group(2)) == Path(options["backend-directory"]) / "python"
    assert '"numpy<2"' in served and "torch" not in served.replace("torch-free", "")
    for port in (options["grpc-port"], options["http-port"], options["metrics-port"]):
        assert re.search(rf"^EXPOSE .*\b{port}\b", served, re.MULTILINE)


def test_triton_image_health_check_asks_the_grpc_health_service_for_real(server) -> None:
    """The image's HEALTHCHECK command, run against a real server (fer-cloud serves the same health service) and a closed port."""
    text, options, _ = _triton_image()
    health = _json_list(text, "HEALTHCHECK --interval=\\S+ --timeout=\\S+ --start-period=\\S+(?: --retries=\\d+)? CMD")
    assert health[:2] == ["python3", "-c"]
    address = f"127.0.0.1:{options['grpc-port']}"
    assert address in health[2]
    serving = subprocess.run([sys.executable, "-c", health[2].replace(address, f"127.0.0.1:{server.port}")], capture_output=True, timeout=60)
    assert serving.returncode == 0, serving.stderr
    server.stop_now()
    stopped = subprocess.run([sys.executable, "-c", health[2].replace(address, f"127.0.0.1:{server.port}")], capture_output=True, timeout=60)
    assert stopped.returncode != 0


def test_compose_runs_cloud_then_edge_against_it() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["edge"]["depends_on"]["cloud"]["condition"] == "service_healthy"
    args = edge_parser().parse_args(services["edge"]["command"])
    assert args.cloud == "cloud:8001" and args.strategy == "split"


# --- Kubernetes ---------------------------------------------------------------------------------


def test_kubernetes_manifests_probe_grpc_health_and_balance_client_side() -> None:
    kinds = _by_kind(DEPLOY / "kubernetes" / "fer-cloud.yaml")
    assert set(kinds) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    pod = kinds["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["readinessProbe"]["grpc"]["port"] == 8001 and container["livenessProbe"]["grpc"]["port"] == 8001
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert container["resources"]["requests"]["cpu"]
    served = cloud_parser().parse_args(container["args"])
    assert served.max_connection_age_s and served.metrics_port == 9090
    assert kinds["Service"]["spec"]["clusterIP"] == "None"
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "fer-cloud"


def _keepalive_matches_fer_cloud(options: dict[str, str], where: str) -> None:
    """Edges ping every 10 s; a server that does not permit it answers with GOAWAY (too many pings)."""
    flags = {
        "grpc.keepalive_permit_without_calls": "grpc-keepalive-permit-without-calls",
        "grpc.http2.min_recv_ping_interval_without_data_ms": "grpc-http2-min-recv-ping-interval-without-data",
        "grpc.http2.max_pings_without_data": "grpc-http2-max-pings-without-data",
        "grpc.keepalive_time_ms": "grpc-keepalive-time",
        "grpc.keepalive_timeout_ms": "grpc-keepalive-timeout",
    }
    for name, value in KEEPALIVE_PERMIT_OPTIONS:
        flag = flags[name]
        given = options.get(flag)
        assert given is not None, f"{where}: --{flag} missing (fer-cloud sets {name}={value})"
        assert {"true": 1, "false": 0}.get(given, given) == value or given == str(value), f"{where}: --{flag}={given}, fer-cloud has {value}"


def test_triton_deployment_matches_fer_cloud_probes_balancing_and_keepalive() -> None:
    cloud = _by_kind(DEPLOY / "kubernetes" / "fer-cloud.yaml")
    triton = _by_kind(DEPLOY / "kubernetes" / "fer-triton.yaml")
    assert set(triton) == {"Deployment", "Service", "HorizontalPodAutoscaler"}
    cloud_container = cloud["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    pod = triton["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    options = _options(container["args"])
    _, image_options, repository = _triton_image()

    # Same image, same repository and backend as the image's own command.
    assert container["image"] == f"fer-triton:{VERSION}"
    assert Path(options["model-repository"]) == repository
    assert options["backend-directory"] == image_options["backend-directory"]
    # The probes are fer-cloud's, on Triton's gRPC port (Triton serves grpc.health.v1 there).
    grpc_port = int(options["grpc-port"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe] == {**cloud_container[probe], "grpc": {**cloud_container[probe]["grpc"], "port": grpc_port}}
    assert container["startupProbe"]["grpc"]["port"] == grpc_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["grpc"] == grpc_port and ports["metrics"] == int(options["metrics-port"]) and ports["http"] == int(options["http-port"])
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == options["metrics-port"]
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # Connections recycled as fer-cloud's are, keepalive permitted as fer-cloud permits it.
    cloud_age_s = cloud_parser().parse_args(cloud_container["args"]).max_connection_age_s
    assert int(options["grpc-max-connection-age"]) == int(cloud_age_s * 1000)
    _keepalive_matches_fer_cloud(options, "fer-triton.yaml")
    _keepalive_matches_fer_cloud(image_options, "Dockerfile.triton")
    # Headless Service for client-side round robin, autoscaler on the Deployment.
    service = triton["Service"]["spec"]
    assert service["clusterIP"] == "None" and service["selector"] == pod["metadata"]["labels"]
    assert {p["name"]: p["port"] for p in service["ports"]}["grpc"] == grpc_port
    assert triton["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == triton["Deployment"]["metadata"]["name"]


def _manifests(kserve: bool) -> list:
    """Every resource of deploy/kubernetes and deploy/kserve: KServe's own, or the others."""
    paths = sorted((DEPLOY / "kubernetes").glob("*.yaml")) + sorted((DEPLOY / "kserve").glob("*.yaml"))
    return [
        pytest.param(d, id=f"{path.parent.name}/{path.name}:{d['kind']}")
        for path in paths
        for d in _documents(path)
        if d["apiVersion"].startswith("serving.kserve.io/") == kserve
    ]


@pytest.mark.parametrize("document", _manifests(kserve=False))
def test_kubernetes_manifests_pass_the_api_schema(document: dict) -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    validate.validate(document, desired_version=KUBERNETES_VERSION, strict=True)


def test_the_kubernetes_schema_check_catches_a_misspelled_field() -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    deployment = copy.deepcopy(_by_kind(DEPLOY / "kubernetes" / "fer-triton.yaml")["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["grpc"]["prot"] = container["readinessProbe"]["grpc"].pop("port")
    with pytest.raises(validate.ValidationError):
        validate.validate(deployment, desired_version=KUBERNETES_VERSION, strict=True)


# --- KServe: the SDK's field tables, strictly -----------------------------------------------------


@dataclass
class ApiType:
    """One generated KServe API model: JSON field name -> type, and the fields that must be set."""

    fields: dict[str, str]
    required: set[str] = field(default_factory=set)


def _kserve_wheel() -> Path | None:
    given = os.environ.get("FER_KSERVE_WHEEL")
    if given:
        return Path(given)
    found = sorted((ROOT / ".cache" / "kserve").glob("kserve-*.whl"))
    return found[-1] if found else None


@cache
def kserve_types() -> dict[str, ApiType]:
    """``kserve.models``' classes, read from the SDK wheel's source (the classes are plain tables)."""
    wheel = _kserve_wheel()
    if wheel is None or not wheel.exists():
        pytest.skip("the KServe SDK wheel is not here: scripts/test.sh downloads it (pip download --no-deps kserve) into .cache/kserve, or set FER_KSERVE_WHEEL")
    types: dict[str, ApiType] = {}
    with zipfile.ZipFile(wheel) as archive:
        for name in archive.namelist():
            if not (name.startswith("kserve/models/") and name.endswith(".py")):
                continue
            source = archive.read(name).decode()
            for node in ast.parse(source).body:
                if not isinstance(node, ast.ClassDef):
                    continue
                tables = {
                    statement.targets[0].id: ast.literal_eval(statement.value)
                    for statement in node.body
                    if isinstance(statement, ast.Assign) and isinstance(statement.targets[0], ast.Name) and statement.targets[0].id in ("openapi_types", "attribute_map")
                }
                if set(tables) != {"openapi_types", "attribute_map"}:
                    continue
                json_name = tables["attribute_map"]
                required = {json_name[a] for a in re.findall(r"Invalid value for `(\w+)`, must not be `None`", ast.get_source_segment(source, node) or "") if a in json_name}
                types[node.name] = ApiType({json_name[a]: t for a, t in tables["openapi_types"].items()}, required)
    assert "V1beta1InferenceService" in types, f"no InferenceService model in {wheel}"
    return types


@cache
def kubernetes_definitions() -> dict:
    from importlib import resources

    pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    folder = resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}.0-local-strict"
    return json.loads((folder / "_definitions.json").read_text())


def _kubernetes_definition(type_name: str) -> str:
    """The Kubernetes schema definition behind an SDK type name (``V1Container``, ``K8sIoApiAppsV1DeploymentStrategy``)."""
    definitions = kubernetes_definitions()["$defs"]
    if type_name == "ResourceQuantity":
        return "io.k8s.apimachinery.pkg.api.resource.Quantity"
    qualified = re.fullmatch(r"K8sIoApi([A-Z][a-z]+)(V\d\w*?)([A-Z]\w*)", type_name)
    if qualified:
        key = f"io.k8s.api.{qualified.group(1).lower()}.{qualified.group(2).lower()}.{qualified.group(3)}"
        assert key in definitions, f"{type_name}: no {key} in the Kubernetes {KUBERNETES_VERSION} schema"
        return key
    match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", type_name)
    assert match, f"{type_name}: neither a KServe nor a Kubernetes type"
    version, kind = match.group(1).lower(), match.group(2)
    for group in ("io.k8s.api.core", "io.k8s.apimachinery.pkg.apis.meta"):
        if f"{group}.{version}.{kind}" in definitions:
            return f"{group}.{version}.{kind}"
    candidates = [k for k in definitions if k.endswith(f".{version}.{kind}")]
    assert len(candidates) == 1, f"{type_name}: {candidates or 'nothing'} in the Kubernetes {KUBERNETES_VERSION} schema"
    return candidates[0]


def _kubernetes_errors(value: object, type_name: str, path: str) -> list[str]:
    import jsonschema
    from referencing import Registry, Resource

    definitions = kubernetes_definitions()
    registry = Resource.from_contents(definitions) @ Registry()
    schema = {"$schema": definitions["$schema"], "$ref": f"{definitions['$id']}#/$defs/{_kubernetes_definition(type_name)}"}
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [f"{path}{''.join(f'.{p}' for p in error.absolute_path)}: {error.message}" for error in validator.iter_errors(value)]


def schema_errors(value: object, type_name: str, path: str = "") -> list[str]:
    """Everything in ``value`` that the type does not allow: unknown or missing fields, wrong types."""
    types = kserve_types()
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    if type_name == "object":
        return []
    if type_name in primitives:
        ok = isinstance(value, primitives[type_name]) and not (type_name in ("int", "float") and isinstance(value, bool))
        return [] if ok else [f"{path}: {value!r} is not {type_name}"]
    if (match := re.fullmatch(r"list\[(.+)\]", type_name)) is not None:
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [e for i, item in enumerate(value) for e in schema_errors(item, match.group(1), f"{path}[{i}]")]
    if (match := re.fullmatch(r"dict\(str, (.+)\)", type_name)) is not None:
        if not isinstance(value, dict):
            return [f"{path}: not a mapping"]
        return [e for key, item in value.items() for e in ([f"{path}: key {key!r} is not a string"] if not isinstance(key, str) else schema_errors(item, match.group(1), f"{path}.{key}"))]
    if type_name not in types:
        return _kubernetes_errors(value, type_name, path)
    if not isinstance(value, dict):
        return [f"{path}: not a mapping ({type_name})"]
    api = types[type_name]
    errors = [f"{path}.{key}: no such field in {type_name}" for key in value if key not in api.fields]
    errors += [f"{path}.{key}: required by {type_name}" for key in sorted(api.required - set(value))]
    return errors + [e for key, item in value.items() if key in api.fields for e in schema_errors(item, api.fields[key], f"{path}.{key}")]


def kserve_errors(document: dict) -> list[str]:
    group, _, version = document["apiVersion"].partition("/")
    assert group == "serving.kserve.io", document["apiVersion"]
    type_name = f"{version[0].upper()}{version[1:]}{document['kind']}"
    assert type_name in kserve_types(), f"the KServe SDK has no {type_name}"
    return schema_errors(document, type_name, document["kind"])


@pytest.mark.parametrize("document", _manifests(kserve=True))
def test_kserve_manifests_pass_the_kserve_api_schema(document: dict) -> None:
    assert kserve_errors(document) == []


def _mutated(kind: str, change) -> dict:
    document = copy.deepcopy(_by_kind(DEPLOY / "kserve" / "fer-triton.yaml")[kind])
    change(document)
    return document


def _rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


MISTAKES = {
    "misspelled modelFormat": ("InferenceService", lambda d: _rename(d["spec"]["predictor"]["model"], "modelFormat", "modelformat"), "spec.predictor.model.modelformat: no such field"),
    "misspelled storageUri": ("InferenceService", lambda d: _rename(d["spec"]["predictor"]["model"], "storageUri", "storageURI"), "spec.predictor.model.storageURI: no such field"),
    "a field at the wrong level": ("InferenceService", lambda d: d["spec"].update(minReplicas=d["spec"]["predictor"].pop("minReplicas")), "spec.minReplicas: no such field"),
    "a string for an integer": ("InferenceService", lambda d: d["spec"]["predictor"].update(minReplicas="2"), "spec.predictor.minReplicas: '2' is not int"),
    "no predictor": ("InferenceService", lambda d: d["spec"].pop("predictor"), "spec.predictor: required"),
    "a misspelled Kubernetes field inside": ("InferenceService", lambda d: _rename(d["spec"]["predictor"]["model"]["ports"][0], "containerPort", "containerport"), "spec.predictor.model.ports[0]"),
    "misspelled supportedModelFormats": ("ServingRuntime", lambda d: _rename(d["spec"], "supportedModelFormats", "supportedModelFormat"), "spec.supportedModelFormat: no such field"),
    "a misspelled container field": ("ServingRuntime", lambda d: _rename(d["spec"]["containers"][0], "volumeMounts", "volumeMount"), "spec.containers[0]"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_the_kserve_schema_check_catches_mistakes(mistake: str) -> None:
    kind, change, expected = MISTAKES[mistake]
    errors = kserve_errors(_mutated(kind, change))
    assert any(expected in e for e in errors), errors


def test_kserve_inference_service_runs_triton_over_grpc_on_the_repository_the_job_writes() -> None:
    kinds = _by_kind(DEPLOY / "kserve" / "fer-triton.yaml")
    assert set(kinds) == {"PersistentVolumeClaim", "Job", "ServingRuntime", "InferenceService"}
    service, runtime, job = kinds["InferenceService"], kinds["ServingRuntime"]["spec"], kinds["Job"]["spec"]["template"]["spec"]
    model = service["spec"]["predictor"]["model"]
    # Triton model format, Open Inference Protocol v2, Triton's gRPC port exposed (h2c).
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] in ("v2", "grpc-v2")
    assert model["runtime"] == kinds["ServingRuntime"]["metadata"]["name"]
    assert model["modelFormat"] in [{k: f[k] for k in ("name", "version")} for f in runtime["supportedModelFormats"]]
    assert model["protocolVersion"] in runtime["protocolVersions"]
    (container,) = runtime["containers"]
    options = _options(container["args"])
    assert container["command"] == ["tritonserver"] and container["image"] == f"fer-triton:{VERSION}"
    assert [(p["name"], p["containerPort"]) for p in model["ports"]] == [("h2c", int(options["grpc-port"]))]
    assert runtime["annotations"]["prometheus.kserve.io/port"] == options["metrics-port"]
    assert service["metadata"]["annotations"]["serving.kserve.io/enable-prometheus-scraping"] == "true"
    _, image_options, _ = _triton_image()
    assert options["backend-directory"] == image_options["backend-directory"]
    _keepalive_matches_fer_cloud(options, "fer-tritonserver runtime")
    # KServe mounts the storageUri at /mnt/models; the Job writes the repository to that claim.
    assert options["model-repository"] == "/mnt/models"
    (export_container,) = job["containers"]
    # fer-cloud's image holds the same package and weights, and the export extra.
    assert export_container["image"] == f"fer-cloud:{VERSION}"
    assert re.search(r"pip install .*'\.\[[^]]*\bexport\b[^]]*\]'", (DEPLOY / "Dockerfile.cloud").read_text())
    assert export_container["command"] == ["fer-train"]
    export = train_parser().parse_args(export_container["args"])
    assert export.command == "export" and export.triton
    (mount,) = [m for m in export_container["volumeMounts"] if Path(export.out).is_relative_to(m["mountPath"])]
    (volume,) = [v for v in job["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    within_claim = (Path(export.out) / "triton").relative_to(mount["mountPath"])
    assert model["storageUri"] == f"pvc://{claim}/{within_claim}"


# --- tritonserver's options -----------------------------------------------------------------------


def _tritonserver() -> Path:
    given = os.environ.get("FER_TRITON_SERVER")
    if given and Path(given).is_file():
        return Path(given)
    found = sorted(ROOT.glob(".venv-triton/lib/python3*/site-packages/pytriton/tritonserver/bin/tritonserver"))
    if not found:
        pytest.skip("no tritonserver binary here (the nvidia-pytriton wheel in .venv-triton, or FER_TRITON_SERVER)")
    return found[-1]


@cache
def _tritonserver_options(binary: Path) -> set[str]:
    usage = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60)
    options = set(re.findall(r"^  --([a-z0-9-]+)", usage.stdout + usage.stderr, re.MULTILINE))
    assert "model-repository" in options, f"unexpected tritonserver --help output: {usage.stdout[:500]}{usage.stderr[:500]}"
    return options


def test_every_tritonserver_argument_is_an_option_of_the_real_binary() -> None:
    known = _tritonserver_options(_tritonserver())
    _, image, _ = _triton_image()
    deployment = _by_kind(DEPLOY / "kubernetes" / "fer-triton.yaml")["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    runtime = _by_kind(DEPLOY / "kserve" / "fer-triton.yaml")["ServingRuntime"]["spec"]["containers"][0]["args"]
    for where, options in (("Dockerfile.triton", image), ("fer-triton.yaml", _options(deployment)), ("kserve/fer-triton.yaml", _options(runtime))):
        unknown = set(options) - known
        assert not unknown, f"{where}: tritonserver has no option {sorted(unknown)}"
