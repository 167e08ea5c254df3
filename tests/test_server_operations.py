"""Operating the cloud service: bearer token, TLS and mutual TLS, metrics, graceful drain."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from fer_bench.loopback import attention_off_the_loop, start_server
from servers import make_certificates
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


def test_each_model_is_warmed_up_before_the_server_says_serving_and_off_the_metrics(trained_model, sample_face) -> None:
    """A first request pays one-off costs (the image decoder's loading, the decode thread): the server pays
    them at start, with one input per served model (an image decoded for fer_classifier), counted nowhere."""
    from dataclasses import replace

    import cv2

    from cloud_server.runtimes import load_runtime
    from cloud_server.server import CloudServer, ServerOptions
    from cloud_server.engine import InferenceEngine

    served = load_runtime(trained_model, "cpu", "onnx")
    shapes: dict[str, list[tuple[int, ...]]] = {name: [] for name in served.functions}
    reachable_during_warm_up: list[bool] = []

    def recording(name, forward):
        def run(x):
            shapes[name].append(x.shape)
            if not reachable_during_warm_up:  # the port is bound; nothing may answer on it yet
                with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                    try:
                        grpc.channel_ready_future(channel).result(timeout=0.3)
                        reachable_during_warm_up.append(True)
                    except grpc.FutureTimeoutError:
                        reachable_during_warm_up.append(False)
            return forward(x)
        return run

    engine = InferenceEngine(replace(served, functions={name: recording(name, f) for name, f in served.functions.items()}))
    server = CloudServer(engine, ServerOptions(host="127.0.0.1", port=0))
    server.start()
    try:
        size, split = engine.config.input_size, tuple(engine.config.split_shape)
        assert shapes == {name: [(1, 3, size, size) if name == "fer_classifier" else (1, *split)] for name in served.functions}
        assert reachable_during_warm_up == [False]  # warmed up before the server started answering
        assert engine.metrics.registry.get_sample_value("fer_requests_total", {"model": "fer_classifier", "status": "OK"}) is None
        client = CloudClient(f"127.0.0.1:{server.port}", model_fingerprint(trained_model))
        call = client.infer(client.image_request(cv2.imencode(".jpg", sample_face)[1].tobytes()), 5.0)
        assert call.output.shape[-1] == 7
        assert engine.metrics.registry.get_sample_value("fer_requests_total", {"model": "fer_classifier", "status": "OK"}) == 1.0
        client.close()
    finally:
        server.stop_now()
