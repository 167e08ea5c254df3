"""Several cloud replicas: the edge spreads requests round-robin and loses none when one dies."""

from __future__ import annotations

from fer_bench.loopback import start_server

from edge_client.runner import EdgeRunner
from edge_client.transport import CloudClient, channel_target
from shared_model.checkpoint import model_fingerprint


def _served(server) -> float:
    metric = server.engine.metrics.requests.labels("fer_attention", "OK")
    return metric._value.get()


def test_channel_targets() -> None:
    assert channel_target("10.0.0.5:8001") == "10.0.0.5:8001"
    assert channel_target("127.0.0.1:1,127.0.0.1:2") == "ipv4:127.0.0.1:1,127.0.0.1:2"
    assert channel_target("dns:///fer-cloud.default.svc:8001") == "dns:///fer-cloud.default.svc:8001"


def test_round_robin_over_three_replicas_and_one_dies(trained_model, sample_face) -> None:
    replicas = [start_server(trained_model) for _ in range(3)]
    target = ",".join(f"127.0.0.1:{r.port}" for r in replicas)
    client = CloudClient(target, model_fingerprint(trained_model), timeout_s=5.0)
    runner = EdgeRunner(trained_model, "split", client, timeout_s=5.0)
    try:
        first = [runner.classify(sample_face) for _ in range(30)]
        counts = [_served(r) for r in replicas]
        replicas[1].stop_now()
        second = [runner.classify(sample_face) for _ in range(30)]
    finally:
        client.close()
        for r in replicas:
            r.stop_now()
    assert all(r.strategy == "split" and not r.fallback for r in first)
    assert all(c >= 5 for c in counts), f"requests were not spread: {counts}"
    assert len(second) == 30 and all(r.strategy == "split" and not r.fallback for r in second), [r.fallback_reason for r in second]
    assert _served(replicas[0]) + _served(replicas[2]) == sum(counts) - counts[1] + 30
