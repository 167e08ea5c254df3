"""Deployment files parse, and the commands they run are ones our CLIs accept.

No Docker engine or cluster runs here: the images and manifests themselves are
not exercised, only what can be checked from the files.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from cloud_server.cli import build_parser as cloud_parser  # noqa: E402
from edge_client.cli import build_parser as edge_parser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _json_list(dockerfile: str, instruction: str) -> list[str]:
    match = re.search(rf"^{instruction} (\[.*\])$", dockerfile, re.MULTILINE)
    assert match, f"no {instruction} in exec form"
    return yaml.safe_load(match.group(1))


@pytest.mark.parametrize("name, parser, script", [("Dockerfile.cloud", cloud_parser, "fer-cloud"), ("Dockerfile.edge", edge_parser, "fer-edge")])
def test_dockerfiles_run_as_non_root_with_health_checks_and_valid_commands(name: str, parser, script: str) -> None:
    text = (ROOT / "deploy" / name).read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.MULTILINE)
    assert _json_list(text, "ENTRYPOINT") == [script]
    parser().parse_args(_json_list(text, "CMD"))
    health = _json_list(text, "HEALTHCHECK --interval=\\S+ --timeout=\\S+ --start-period=\\S+(?: --retries=\\d+)? CMD")
    assert health[0] == script
    parser().parse_args(health[1:])


def test_compose_runs_cloud_then_edge_against_it() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["edge"]["depends_on"]["cloud"]["condition"] == "service_healthy"
    args = edge_parser().parse_args(services["edge"]["command"])
    assert args.cloud == "cloud:8001" and args.strategy == "split"


def test_kubernetes_manifests_probe_grpc_health_and_balance_client_side() -> None:
    documents = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "fer-cloud.yaml").read_text()))
    kinds = {d["kind"]: d for d in documents}
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


def test_kubernetes_manifests_pass_the_api_schema() -> None:
    validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    for document in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "fer-cloud.yaml").read_text()):
        validate.validate(document, desired_version="1.30", strict=True)
