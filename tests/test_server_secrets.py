"""Secrets stay secret (help, logs, metrics, errors); TLS is asked for explicitly and checked."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from fer_bench.loopback import start_server
from servers import make_certificates
from test_server_errors import features_request

from cloud_server import cli as cloud_cli
from cloud_server.engine import InferenceEngine
from cloud_server.server import CloudServer, ServerOptions
from edge_client import cli as edge_cli
from fer_bench.shaping import NetnsLink, netns_unavailable_reason
from shared_model.protocol import pb_grpc

SECRET = "tok-7f3a9c-never-print-me"


def _help(parser_factory, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        parser_factory().parse_args(argv)
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "factory, argv",
    [
        (cloud_cli.build_parser, ["serve", "--help"]),
        (cloud_cli.build_parser, ["health", "--help"]),
        (edge_cli.build_parser, ["run", "--help"]),
        (edge_cli.build_parser, ["demo", "--help"]),
    ],
)
def test_help_never_shows_the_token_from_the_environment(factory, argv, capsys, monkeypatch) -> None:
    monkeypatch.setenv("FER_CLOUD_TOKEN", SECRET)
    text = _help(factory, argv, capsys)
    assert "--token" in text and "FER_CLOUD_TOKEN" in text
    assert SECRET not in text


def test_the_token_is_still_read_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("FER_CLOUD_TOKEN", SECRET)
    assert cloud_cli.read_token(cloud_cli.build_parser().parse_args(["serve"])) == SECRET
    assert cloud_cli.read_token(cloud_cli.build_parser().parse_args(["serve", "--token", "other"])) == "other"
    assert edge_cli.build_parser().parse_args(["run", "x.jpg"]).token == SECRET
    monkeypatch.delenv("FER_CLOUD_TOKEN")
    assert edge_cli.build_parser().parse_args(["run", "x.jpg"]).token is None
    assert cloud_cli.read_token(cloud_cli.build_parser().parse_args(["serve"])) is None


def test_client_ca_without_a_certificate_is_an_error_not_plaintext(tmp_path: Path, capsys) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not used")
    assert cloud_cli.main(["serve", "--port", "0", "--tls-client-ca", str(ca)]) == 2
    assert "--tls-client-ca" in capsys.readouterr().err
    with pytest.raises(ValueError, match="tls-client-ca"):
        CloudServer(None, ServerOptions(port=0, tls_client_ca=ca))  # type: ignore[arg-type]  # refused before the engine is used


def test_plaintext_on_a_network_address_is_logged_and_the_token_never_is(trained_model, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    for host, warned in (("0.0.0.0", True), ("127.0.0.1", False)):
        caplog.clear()
        server = CloudServer(InferenceEngine(trained_model), ServerOptions(host=host, port=0, token=SECRET))
        server.start()
        server.stop_now()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "WITHOUT TLS" in r.getMessage()]
        assert bool(warnings) == warned, (host, caplog.text)
        assert SECRET not in caplog.text
    assert SECRET not in repr(ServerOptions(token=SECRET))


def test_metrics_and_errors_never_carry_the_token(trained_model) -> None:
    server = start_server(trained_model, token=SECRET, metrics_port=0, metrics_host="127.0.0.1")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        stub.ModelInfer(features_request(), timeout=5, metadata=(("authorization", f"Bearer {SECRET}"),))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(features_request(), timeout=5, metadata=(("authorization", f"Bearer {SECRET}x"),))
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    finally:
        channel.close()
        server.stop_now()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED and SECRET not in caught.value.details()
    assert SECRET not in page and "fer_requests_total" in page


@pytest.mark.parametrize("mutual", [False, True])
def test_health_command_speaks_tls_and_the_token(trained_model, tmp_path: Path, mutual: bool, monkeypatch, capsys) -> None:
    certs = make_certificates(tmp_path)
    server = start_server(
        trained_model, token=SECRET, tls_cert=certs["server.crt"], tls_key=certs["server.key"], tls_client_ca=certs["ca.crt"] if mutual else None
    )
    monkeypatch.setenv("FER_CLOUD_TOKEN", SECRET)
    address = f"localhost:{server.port}"
    client = ["--tls-cert", str(certs["client.crt"]), "--tls-key", str(certs["client.key"])] if mutual else []
    try:
        assert cloud_cli.main(["health", address, "--tls-ca", str(certs["ca.crt"]), *client]) == 0
        assert "SERVING" in capsys.readouterr().out
        assert cloud_cli.main(["health", address, "--timeout-s", "1"]) == 1  # plaintext against TLS: not healthy
        if mutual:
            assert cloud_cli.main(["health", address, "--tls-ca", str(certs["ca.crt"]), "--timeout-s", "1"]) == 1
    finally:
        server.stop_now()
    assert SECRET not in capsys.readouterr().err


def test_a_stream_without_the_token_is_refused_and_health_needs_none(trained_model) -> None:
    server = start_server(trained_model, token=SECRET)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        with pytest.raises(grpc.RpcError) as caught:
            list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter([features_request()]), timeout=5))
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
    finally:
        channel.close()
        server.stop_now()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_health_with_tls_alone_verifies_against_the_default_roots(trained_model, tmp_path: Path) -> None:
    certs = make_certificates(tmp_path)
    server = start_server(trained_model, tls_cert=certs["server.crt"], tls_key=certs["server.key"])
    health = [sys.executable, "-m", "cloud_server.cli", "health", f"localhost:{server.port}", "--tls", "--timeout-s", "5"]
    try:
        # gRPC's default roots come from this variable when set: here, the test CA stands for a public one
        trusted = subprocess.run(health, capture_output=True, text=True, timeout=60, env={**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(certs["ca.crt"])})
        untrusted = subprocess.run(health, capture_output=True, text=True, timeout=60)
    finally:
        server.stop_now()
    assert trusted.returncode == 0 and "SERVING" in trusted.stdout, trusted.stderr
    assert untrusted.returncode == 1  # the test CA is no real root: not verified, not healthy


def test_health_refuses_half_a_client_certificate(tmp_path: Path, capsys) -> None:
    certs = make_certificates(tmp_path)
    assert cloud_cli.main(["health", "127.0.0.1:1", "--tls-cert", str(certs["client.crt"])]) == 2
    assert "--tls-key" in capsys.readouterr().err


class _RecordingHealth(health_pb2_grpc.HealthServicer):
    """A health service that answers SERVING and keeps the authorization header of every check."""

    def __init__(self) -> None:
        self.authorizations: list[str | None] = []

    def Check(self, request, context):  # noqa: N802 (gRPC's name)
        self.authorizations.append(dict(context.invocation_metadata()).get("authorization"))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


@pytest.mark.skipif(netns_unavailable_reason() is not None, reason=f"a non-loopback address of this machine: {netns_unavailable_reason()}")
def test_health_never_sends_the_token_in_plaintext_beyond_this_machine(monkeypatch, capsys) -> None:
    monkeypatch.setenv("FER_CLOUD_TOKEN", SECRET)
    recorder = _RecordingHealth()
    # a veth end of this machine's own: an address that is not loopback, whose traffic never leaves the machine
    with NetnsLink(tag=f"h{threading.get_ident() % 10000}") as link:
        server = grpc.server(futures.ThreadPoolExecutor(2))
        health_pb2_grpc.add_HealthServicer_to_server(recorder, server)
        port = server.add_insecure_port(f"{link.edge_address}:0")
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        try:
            remote = cloud_cli.main(["health", f"{link.edge_address}:{port}", "--timeout-s", "5"])
            remote_err = capsys.readouterr().err
            local = cloud_cli.main(["health", f"127.0.0.1:{port}", "--timeout-s", "5"])
        finally:
            server.stop(None)
    assert remote == 0 and local == 0
    assert recorder.authorizations == [None, f"Bearer {SECRET}"]  # held back on the network, sent on loopback
    assert "not sending the token" in remote_err and SECRET not in remote_err


@pytest.mark.parametrize("argv, bound", [(["serve"], "0.0.0.0"), (["serve", "--host", "127.0.0.1"], "127.0.0.1"), (["serve", "--metrics-host", "127.0.0.1"], "127.0.0.1")])
def test_metrics_bind_where_grpc_does_unless_told(argv: list[str], bound: str) -> None:
    assert cloud_cli.server_options(cloud_cli.build_parser().parse_args(argv)).metrics_host == bound
