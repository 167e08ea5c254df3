"""The benchmarks run end to end on tiny sweeps (their numbers come from real runs, not from here)."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
from pathlib import Path

import pytest

from fer_bench.cli import main as bench_main
from fer_bench.auto_report import auto_cost, fixed_strategy_of
from fer_bench.network import floor_ms, transfer_floor_ms
from fer_bench.shaping import TBF_BURST_BYTES, LinkSpec, netns_unavailable_reason

ROOT = Path(__file__).resolve().parents[1]


def test_transfer_floor_counts_both_directions_less_the_burst() -> None:
    spec = LinkSpec(200_000, rtt_ms=10)
    assert transfer_floor_ms(0, 0, spec) == 0
    expected = ((6374 - TBF_BURST_BYTES) + (6447 - TBF_BURST_BYTES)) / 200_000 * 1000 + 10
    assert transfer_floor_ms(6374, 6447, spec) == pytest.approx(expected)


def test_transfer_floor_takes_the_measured_round_trip_when_given() -> None:
    spec = LinkSpec(1_000_000, rtt_ms=10)
    assert transfer_floor_ms(3000, 100, spec, round_trip_ms=0.7) == pytest.approx(0.7)


def test_floor_of_faces_back_to_back_is_at_least_what_the_bucket_earns_per_face() -> None:
    """At 200 KB/s a 6,400-byte message per face needs 32 ms of tokens, however short the compute:
    the burst is free only if the bucket refilled it; with a long compute it did, and the burst counts."""
    spec = LinkSpec(200_000)
    assert floor_ms(5.0, 6400, 1000, spec, round_trip_ms=1.0) == pytest.approx(32.0)
    long_compute = 40.0
    assert floor_ms(long_compute, 6400, 1000, spec, round_trip_ms=1.0) == pytest.approx(long_compute + (6400 - TBF_BURST_BYTES) / 200 + 1.0)
    assert floor_ms(5.0, 0, 0, spec, round_trip_ms=1.0) == 5.0  # nothing on the wire: compute alone


def _face(name: str, total: float, choice: str | None = None, reason: str | None = None, shaper: str = "proxy") -> dict:
    return {"shaper": shaper, "name": name, "total": total, "auto_choice": choice, "auto_reason": reason}


def test_auto_cost_splits_autos_excess_over_the_best_fixed_strategy_by_choice_and_reason() -> None:
    """cloud-jpeg's mean is 7 ms, the edge's 20: auto's two faces on the cloud at 7.5 and its exploration of the
    edge at 19 ms are 0.5 + 0.5 + 12 = 13 ms above three faces of cloud-jpeg (21 ms): 61.9 %."""
    records = [
        _face("edge", 20.0), _face("edge", 20.0), _face("cloud-jpeg", 6.0), _face("cloud-jpeg", 8.0),
        _face("auto", 7.5, "cloud", "fastest"), _face("auto", 19.0, "edge", "exploring"), _face("auto", 7.5, "cloud", "fastest"),
    ]
    rows = {(r["choice"], r["reason"]): r for r in auto_cost(records)}
    assert set(rows) == {("cloud", "fastest"), ("edge", "exploring"), ("all", "")}
    assert all(r["best"] == "cloud-jpeg" and r["best_mean_ms"] == 7.0 for r in rows.values())
    assert rows[("cloud", "fastest")]["as"] == "cloud-jpeg" and rows[("cloud", "fastest")]["faces"] == 2
    assert rows[("cloud", "fastest")]["excess_ms"] == 1.0 and rows[("edge", "exploring")]["excess_ms"] == 12.0
    assert rows[("all", "")]["excess_ms"] == 13.0 and rows[("all", "")]["share_pct"] == 61.9


def test_auto_cost_takes_each_shaper_on_its_own_and_needs_a_fixed_strategy() -> None:
    records = [_face("edge", 5.0, shaper="netns"), _face("auto", 4.0, "edge", "fastest", shaper="netns"), _face("auto", 9.0, "cloud", "fastest")]
    rows = auto_cost(records)
    assert [(r["shaper"], r["choice"], r["excess_ms"]) for r in rows] == [("netns", "edge", -1.0), ("netns", "all", -1.0)]


def test_the_fixed_strategy_auto_sends_as_has_its_wire_options() -> None:
    assert [fixed_strategy_of("auto", c) for c in ("edge", "cloud", "split", "split-rest")] == ["edge", "cloud-jpeg", "split", "split-rest"]


def test_trace_cost_reads_a_kept_trace_and_refuses_what_is_not_one(tmp_path: Path, capsys) -> None:
    (tmp_path / "trace.json").write_text(json.dumps([_face("cloud-jpeg", 7.0), _face("auto", 9.0, "split-rest", "exploring")]))
    assert bench_main(["trace-cost", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["choice"], r["as"], r["excess_ms"]) for r in rows] == [("split-rest", "split-rest", 2.0), ("all", "auto", 2.0)]
    (tmp_path / "other.json").write_text(json.dumps({"points": []}))
    assert bench_main(["trace-cost", str(tmp_path / "other.json")]) == 2
    assert "is not the trace.json" in capsys.readouterr().err
    assert bench_main(["trace-cost", str(tmp_path / "missing")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_model_benchmark_writes_table_files(tmp_path: Path, capsys) -> None:
    assert bench_main(["model", "--runs", "2", "--warmup", "1", "--threads", "1", "--out", str(tmp_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    names = [r["config"] for r in records]
    assert names[:2] == ["backbone", "backbone"] and "backbone+asp+sfp" in names
    full = next(r for r in records if r["config"] == "backbone+asp+sfp")
    assert full["split_bytes"] == {"fp32": 25088, "fp16": 12544, "uint8": 6272}
    assert all(r["params"] > 1_200_000 and r["macs"] > 0 and r["latency_ms"] > 0 for r in records)
    assert {p.name for p in tmp_path.iterdir()} == {"model.csv", "model.json", "model_latency.png"}


def test_network_benchmark_tiny_sweep(tmp_path: Path, capsys) -> None:
    shapers = "proxy" if netns_unavailable_reason() else "proxy,netns"
    code = bench_main([
        "network", "--shapers", shapers, "--profiles", "laptop", "--bandwidths", "500", "--strategies", "edge,split,split-paper,split-rest,cloud-jpeg,auto",
        "--requests", "2", "--adapt", "3", "--out", str(tmp_path), "--json",
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    points = report["points"]
    assert len(points) == 6 * len(shapers.split(","))
    by_name = {name: [p for p in points if p["strategy"] == name] for name in ("split", "split-paper", "split-rest", "auto")}
    assert all(6272 < p["bytes_up"] < 6600 and p["fallbacks"] == 0 and p["floor_ms"] > 0 for p in by_name["split-paper"] + by_name["split"])
    assert all(p["bytes_down"] > 6272 for p in by_name["split-paper"]) and all(p["bytes_down"] <= 1100 for p in by_name["split"])
    assert all(p["bytes_down"] < 300 and p["fallbacks"] == 0 for p in by_name["split-rest"] + by_name["auto"] if p["bytes_up"])
    edge = [p for p in points if p["strategy"] == "edge"]
    assert all(p["bytes_up"] == 0 and p["network_ms"] == 0 for p in edge)
    assert report["compute_ms"]["laptop"]["whole_ms"] > 0 and report["compute_ms"]["laptop"]["runtime"] == "onnx"
    assert (tmp_path / "network.png").stat().st_size > 0 and (tmp_path / "network.csv").exists()


def test_trace_with_the_cloud_killed_loses_no_face(tmp_path: Path, capsys) -> None:
    """A short trace through the proxy: the cloud is killed mid-trace and restarted; every face is answered."""
    code = bench_main([
        "trace", "--profile", "laptop", "--shapers", "proxy", "--strategies", "edge,split,auto", "--steps", "1000,200", "--dwell-s", "3",
        "--kill-at", "1.5", "--restart-after", "2", "--timeout-ms", "500", "--out", str(tmp_path), "--json",
    ])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert [e["what"] for e in report["events"] if "cloud" in e["what"]] == ["cloud killed", "cloud restarted"]
    rows = {r["strategy"]: r for r in report["summary"]}
    assert rows["split"]["fallbacks"] > 0  # the kill was felt ...
    with (tmp_path / "trace.csv").open() as handle:
        records = list(csv.DictReader(handle))
    # ... and every face has an answer: from the cloud, or from the edge with the reason it fell back
    assert records and all(r["strategy"] in {"edge", "split", "split-rest", "cloud"} for r in records)
    assert all(r["fallback_reason"] for r in records if r["fallback"] == "True")
    assert sum(r["faces"] for r in rows.values()) == len(records)
    assert (tmp_path / "trace.png").stat().st_size > 0
    with (tmp_path / "trace_steps.csv").open() as handle:
        steps = list(csv.DictReader(handle))
    assert {(s["step"], s["bandwidth_kbps"]) for s in steps} == {("0", "1000.0"), ("1", "200.0")}
    for name in ("edge", "split", "auto"):  # each face in exactly one step, by the time it was answered
        mine = [r for r in records if r["name"] == name]
        assert sum(int(s["faces"]) for s in steps if s["strategy"] == name) == len(mine)
        in_first = sum(float(r["t"]) < 3.0 for r in mine)
        assert next(int(s["faces"]) for s in steps if s["strategy"] == name and s["step"] == "0") == in_first
    with (tmp_path / "trace_outage.csv").open() as handle:
        outage = {row["strategy"]: row for row in csv.DictReader(handle)}
    assert set(outage) == {"edge", "split", "auto"} and outage["edge"]["answered_locally"] == "{}"
    assert "unavailable" in outage["split"]["answered_locally"] or "circuit_open" in outage["split"]["answered_locally"]
    whole = next(r for r in report["auto_cost"] if r["choice"] == "all")  # auto's faces, all accounted for
    assert whole["faces"] == rows["auto"]["faces"] and whole["best"] in {"edge", "split"}
    assert sum(r["faces"] for r in report["auto_cost"] if r["choice"] != "all") == whole["faces"]
    assert (tmp_path / "trace_auto_cost.csv").exists()


def test_video_benchmark_tiny_run_keeps_every_face(tmp_path: Path, capsys) -> None:
    """The whole edge pipeline on a short clip behind the proxy: a frame rate per combination, and every face's
    record with its latency parts and, for auto, its choice."""
    code = bench_main([
        "video", "--shaper", "proxy", "--links", "unthrottled", "--strategies", "edge,auto", "--in-flight", "1,2", "--rounds", "1",
        "--frames", "16", "--out", str(tmp_path), "--json",
    ])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["strategy"], r["in_flight"]) for r in rows} == {("edge", 1), ("edge", 2), ("auto", 1), ("auto", 2)}
    assert all(r["fps_median"] > 0 and r["fallbacks"] == 0 for r in rows)
    faces = json.loads((tmp_path / "video_faces.json").read_text())
    for row in rows:  # each combination's faces, all kept
        mine = [f for f in faces if f["name"] == row["strategy"] and f["in_flight"] == row["in_flight"]]
        assert len(mine) == row["faces"] and all(f["total"] > 0 for f in mine)
    assert all(f["auto_choice"] for f in faces if f["name"] == "auto") and not any(f["auto_choice"] for f in faces if f["name"] == "edge")
    assert {p.name for p in tmp_path.iterdir()} >= {"video.csv", "video.png", "video_faces.csv"}


def test_server_benchmark_tiny_sweep(tmp_path: Path, capsys) -> None:
    if not Path(os.environ.get("FER_TRITON_PYTHON", ROOT / ".venv-tritonclient" / "bin" / "python")).exists():
        pytest.skip("the load client is tritonclient: scripts/test.sh makes .venv-tritonclient and sets FER_TRITON_PYTHON")
    assert bench_main(["server", "--targets", "fer-cloud", "--concurrency", "1,4", "--seconds", "0.5", "--warmup-seconds", "0.5", "--out", str(tmp_path), "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["target"], r["batching"], r["concurrency"], r["model"]) for r in records] == [("fer-cloud", b, c, "fer_attention") for b in (True, False) for c in (1, 4)]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["server_rss_mib"] > 0 and r["server_cpu_us_per_request"] > 0 for r in records), records
    assert all(r["mean_batch_size"] == 1.0 for r in records if not r["batching"])
    assert (tmp_path / "server.png").stat().st_size > 0 and (tmp_path / "server_summary.csv").stat().st_size > 0


def test_server_benchmark_measures_python_grpc_floors(tmp_path: Path, capsys) -> None:
    """Both floors answer the real client from their own processes; a floor refuses what it cannot answer."""
    if not Path(os.environ.get("FER_TRITON_PYTHON", ROOT / ".venv-tritonclient" / "bin" / "python")).exists():
        pytest.skip("the load client is tritonclient: scripts/test.sh makes .venv-tritonclient and sets FER_TRITON_PYTHON")
    args = ["server", "--batching", "on", "--concurrency", "4", "--seconds", "0.5", "--warmup-seconds", "0.3", "--out", str(tmp_path)]
    assert bench_main([*args, "--targets", "grpc-floor-sync", "--model", "fer_rest"]) == 2
    assert "fer_attention only" in capsys.readouterr().err
    assert bench_main([*args, "--targets", "grpc-floor-aio", "--datatype", "UINT8"]) == 2
    assert "FP32 only" in capsys.readouterr().err
    assert bench_main([*args, "--targets", "grpc-floor-aio,grpc-floor-sync", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["target"] for r in records] == ["grpc-floor-aio", "grpc-floor-sync"]
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["server_cpu_us_per_request"] > 0 for r in records), records


def test_server_benchmark_puts_both_triton_models_beside_fer_cloud(tmp_path: Path, capsys) -> None:
    """The reference (the minimal Triton model) and the full one, each on its own tritonserver, taking turns with fer-cloud."""
    from fer_bench.triton_server import TritonUnavailable, find_tritonserver

    try:
        find_tritonserver()
    except TritonUnavailable as reason:
        pytest.skip(f"Triton Inference Server is not installed: {reason}")
    if not Path(os.environ.get("FER_TRITON_PYTHON", ROOT / ".venv-tritonclient" / "bin" / "python")).exists():
        pytest.skip("the load client is tritonclient: scripts/test.sh makes .venv-tritonclient and sets FER_TRITON_PYTHON")
    args = ["server", "--batching", "on", "--concurrency", "2", "--repeats", "2", "--seconds", "0.5", "--warmup-seconds", "0.5", "--model", "fer_rest"]
    assert bench_main([*args, "--targets", "triton-minimal", "--datatype", "UINT8", "--out", str(tmp_path)]) == 2  # FP32 only
    assert "FP32 only" in capsys.readouterr().err
    assert bench_main([*args, "--targets", "fer-cloud,triton-minimal,triton-full", "--out", str(tmp_path)]) == 0
    table, comparison, legend = capsys.readouterr().out.split("\n\n")
    rows = [line.split()[:3] for line in table.splitlines()]
    assert rows == [["engine", "batching", "clients"], ["fer-cloud", "on", "2"], ["triton-minimal", "on", "2"], ["triton-full", "on", "2"]]
    assert comparison.splitlines()[0].startswith("fer-cloud against triton-minimal, the reference")
    assert comparison.splitlines()[2].split()[:2] == ["on", "2"] and comparison.splitlines()[2].split()[2].endswith("x")
    assert [line.split(":")[0] for line in legend.splitlines()] == ["fer-cloud", "triton-minimal", "triton-full"]
    records = json.loads((tmp_path / "server.json").read_text())
    assert all(r["requests"] > 0 and r["errors"] == 0 and r["model"] == "fer_rest" for r in records), records
    assert all(r["server_peak_rss_mib"] >= r["server_rss_mib"] > 20 for r in records), records  # Triton: the server and its backend stub
    assert sorted((r["target"], r["repeat"]) for r in records) == sorted((t, i) for t in ("fer-cloud", "triton-minimal", "triton-full") for i in (0, 1))


def test_server_benchmark_engines_take_turns_round_by_round() -> None:
    """Each round measures every engine once; which goes first rotates, so a drift of the machine hits all alike."""
    from fer_bench.server_load import RunningServer, _turns

    servers = [RunningServer(name, "", 0) for name in ("a", "b", "c")]
    assert [[s.name for s in _turns(servers, r)] for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_strategies_take_turns_in_blocks_whose_first_face_is_untimed() -> None:
    """The edge worker runs B faces of a strategy in a row and times B - 1; the blocks take turns."""
    from fer_bench.edge_worker import EdgeWorker
    from fer_bench.network import STRATEGIES, _rounds

    worker = EdgeWorker(1)
    edge = {**dataclasses.asdict(STRATEGIES["edge"]), "name": "edge"}
    also = {**edge, "name": "edge-again"}
    command = {"target": "127.0.0.1:1", "strategies": [edge, also], "warmup": 0, "timeout_ms": 1000}
    try:
        blocks = worker.run({**command, "rounds": 2, "block": 3})
        alternating = worker.run({**command, "rounds": 2, "block": 1})
    finally:
        worker.close()
    assert {name: len(rows) for name, rows in blocks.items()} == {"edge": 4, "edge-again": 4}
    assert {name: len(rows) for name, rows in alternating.items()} == {"edge": 2, "edge-again": 2}
    times = sorted((row["t"], name) for name, rows in blocks.items() for row in rows)
    runs = [name for _, name in times]
    lengths = [len(list(group)) for _, group in itertools.groupby(runs)]
    assert all(length % 2 == 0 for length in lengths), runs  # timed faces come two by two: blocks, not alternation
    assert _rounds(40, 5) == 10 and _rounds(41, 5) == 11 and _rounds(20, 1) == 20
