"""Operating the cloud service: bearer token, TLS and mutual TLS, metrics, graceful drain."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from servers import attention_off_the_loop, make_certificates, start_server
from test_server_errors import features_request

from cloud_server.engine import BatchingSettings
from edge_client.runner import EdgeRunner
from edge_client.transport import ClientSecurity, CloudClient
from shared_model.checkpoint import model_fingerprint
from shared_model.protocol import pb, pb_grpc


def test_token_is_required_when_configured(trained_model, sample_face) -> None:
    server = start_server(trained_model, token="s3cret")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        for call in (lambda: stub.ModelInfer(features_request(), timeout=5), lambda: stub.ServerReady(pb.ServerReadyRequest(), timeout=5)):
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(features_request(), timeout=5, metadata=(("authorization", "Bearer wrong"),))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ModelInfer(features_request(), timeout=5, metadata=(("authorization", "Bearer s3cret"),)).outputs
        good = CloudClient(f"127.0.0.1:{server.port}", model_fingerprint(trained_model), ClientSecurity(token="s3cret"), timeout_s=5)
        assert good.healthy()
        assert not EdgeRunner(trained_model, "split", good).classify(sample_face).fallback
        bad = CloudClient(f"127.0.0.1:{server.port}", model_fingerprint(trained_model), timeout_s=5)
        assert EdgeRunner(trained_model, "split", bad).classify(sample_face).fallback_reason == "unauthenticated"
    finally:
        channel.close()
        server.stop_now()


@pytest.mark.parametrize("mutual", [False, True])
def test_tls_with_a_certificate_made_by_the_test(trained_model, sample_face, tmp_path: Path, mutual: bool) -> None:
    certs = make_certificates(tmp_path)
    server = start_server(trained_model, tls_cert=certs["server.crt"], tls_key=certs["server.key"], tls_client_ca=certs["ca.crt"] if mutual else None)
    fingerprint = model_fingerprint(trained_model)
    try:
        security = ClientSecurity(certs["ca.crt"], certs["client.crt"] if mutual else None, certs["client.key"] if mutual else None)
        client = CloudClient(f"localhost:{server.port}", fingerprint, security, timeout_s=5)
        result = EdgeRunner(trained_model, "split", client).classify(sample_face)
        assert result.strategy == "split" and not result.fallback
        plain = CloudClient(f"127.0.0.1:{server.port}", fingerprint, timeout_s=2)
        assert EdgeRunner(trained_model, "split", plain).classify(sample_face).fallback
        if mutual:
            no_client_cert = CloudClient(f"localhost:{server.port}", fingerprint, ClientSecurity(certs["ca.crt"]), timeout_s=2)
            assert EdgeRunner(trained_model, "split", no_client_cert).classify(sample_face).fallback
    finally:
        server.stop_now()


def test_metrics_count_requests_by_model_and_status(trained_model) -> None:
    server = start_server(trained_model, metrics_port=0, metrics_host="127.0.0.1")
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    try:
        stub.ModelInfer(features_request(), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(features_request(data=b"x"), timeout=5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    finally:
        channel.close()
        server.stop_now()
    assert 'fer_requests_total{model="fer_attention",status="OK"} 1.0' in text
    assert 'fer_requests_total{model="fer_attention",status="INVALID_ARGUMENT"} 1.0' in text
    for family in ("fer_queue_seconds_bucket", "fer_compute_seconds_bucket", "fer_request_seconds_bucket", "fer_batch_size_bucket", "fer_in_flight_requests"):
        assert family in text


def test_drain_finishes_in_flight_requests_and_refuses_new_ones(trained_model) -> None:
    server = start_server(attention_off_the_loop(trained_model), batching=BatchingSettings(max_batch_size=8, max_queue_delay_ms=5))
    batcher = server.engine.batchers["fer_attention"]
    fast = batcher.forward
    batcher.forward = lambda x: time.sleep(0.5) or fast(x)  # a slow accelerator: the request stays in flight
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    outcome: dict[str, object] = {}

    def slow_call() -> None:
        try:
            outcome["response"] = stub.ModelInfer(features_request(), timeout=10)
        except grpc.RpcError as error:
            outcome["error"] = error

    caller = threading.Thread(target=slow_call)
    caller.start()
    time.sleep(0.15)  # the request is now being computed
    server.drain(grace=10)
    caller.join()
    assert "response" in outcome, outcome.get("error")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(features_request(), timeout=2)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_requests_refused_while_draining_are_counted(trained_model) -> None:
    """A stream open when the drain begins: its next request is refused UNAVAILABLE in the stream, and counted."""
    server = start_server(trained_model)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    outgoing: queue.Queue = queue.Queue()
    try:
        replies = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(outgoing.get, None), timeout=20)
        before, late = features_request(), features_request()
        before.id, late.id = "before", "late"
        outgoing.put(before)
        assert next(replies).infer_response.id == "before"
        draining = threading.Thread(target=server.drain, args=(10,))
        draining.start()
        while not server.servicer.draining:
            time.sleep(0.01)
        outgoing.put(late)
        reply = next(replies)
        assert reply.error_message.startswith("UNAVAILABLE") and reply.infer_response.id == "late"
        outgoing.put(None)
        draining.join(15)
    finally:
        outgoing.put(None)
        channel.close()
        server.stop_now()
    counted = server.engine.metrics.registry.get_sample_value
    assert counted("fer_requests_total", {"model": "fer_attention", "status": "UNAVAILABLE"}) == 1.0
    assert counted("fer_requests_total", {"model": "fer_attention", "status": "OK"}) == 1.0
