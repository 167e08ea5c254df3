"""Measure: server CPU time per request, throughput, latency and resident memory of fer-cloud.

Not a test (figures come from measurements, not from timed unit tests). The
setup of issue 11: ``fer-cloud serve --threads 1`` pinned to one core
(``taskset``), closed-loop clients pinned to another, each client with a TCP
connection of its own, sending FP32 ``[1, 8, 28, 28]`` to ``fer_attention``.

The primary figure is the server's CPU time per request (beside it, the context
switches of all the server's threads per request, from /proc): the server process's
CPU seconds (user + system, from /proc) over the measuring window divided by
the requests answered in it. Unlike throughput it hardly depends on what else
runs on the machine. Prints one JSON line per concurrency level.

    .venv/bin/python -m fer_bench.measure.speed --clients 1,64 --seconds 5
    .venv/bin/python -m fer_bench.measure.speed --client triton   # tritonclient, from .venv-tritonclient
    .venv/bin/python -m fer_bench.measure.speed --server-python /other/checkout/.venv/bin/python --server-cwd /other/checkout
    .venv/bin/python -m fer_bench.measure.speed --server-module fer_bench.measure.grpc_floor_server   # Python gRPC's own cost per call

Options after ``--`` go to ``fer-cloud serve`` (e.g. ``-- --runtime torch``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]
from shared_model.protocol import ATTENTION_MODEL  # noqa: E402

TRITON_PYTHON = ROOT / ".venv-tritonclient" / "bin" / "python"

# The client runs in a process of its own (and, for tritonclient, in its own virtual environment).
CLIENT = r'''
import json, os, sys, threading, time
import numpy as np

kind, target, clients, seconds, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
MODEL = os.environ["FER_MEASURE_MODEL"]
ticks = os.sysconf("SC_CLK_TCK")

def server_cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / ticks

def server_switches():
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        for line in open(f"/proc/{pid}/task/{task}/status"):
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total

def server_rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

features = np.random.default_rng(0).standard_normal((1, 8, 28, 28)).astype(np.float32)
if kind == "triton":
    import tritonclient.grpc as grpcclient
    def make():
        client = grpcclient.InferenceServerClient(url=target, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        tensor = grpcclient.InferInput("features", list(features.shape), "FP32")
        tensor.set_data_from_numpy(features)
        return lambda: client.infer(MODEL, [tensor])
else:
    import grpc
    sys.path.insert(0, os.getcwd())
    from shared_model.protocol import pb, pb_grpc
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="features", datatype="FP32", shape=list(features.shape))
    request.raw_input_contents.append(features.tobytes())
    def make():
        channel = grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return lambda: stub.ModelInfer(request, timeout=30)

latencies = [[] for _ in range(clients)]
errors = [0] * clients
state = {"measuring": False, "stop": False}
ready = threading.Barrier(clients + 1)

def run(i):
    call = make()
    for _ in range(20):
        call()  # connect and warm up
    ready.wait()
    mine = latencies[i]
    while not state["stop"]:
        began = time.perf_counter()
        try:
            call()
        except Exception:
            errors[i] += 1
            continue
        if state["measuring"]:
            mine.append(time.perf_counter() - began)

threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
for t in threads:
    t.start()
ready.wait()
time.sleep(min(1.0, seconds / 5))  # steady state before the window opens
cpu0, switches0, began = server_cpu(), server_switches(), time.perf_counter()
state["measuring"] = True
time.sleep(seconds)
state["measuring"] = False
cpu1, switches1, elapsed = server_cpu(), server_switches(), time.perf_counter() - began
count = sum(len(x) for x in latencies)
state["stop"] = True
for t in threads:
    t.join(30)
flat = np.sort(np.concatenate([np.asarray(x) for x in latencies])) * 1000 if count else np.zeros(1)
print(json.dumps({
    "client": kind, "clients": clients, "requests": count, "errors": sum(errors), "seconds": round(elapsed, 2),
    "req_per_s": round(count / elapsed), "p50_ms": round(float(np.percentile(flat, 50)), 3),
    "p90_ms": round(float(np.percentile(flat, 90)), 3), "p99_ms": round(float(np.percentile(flat, 99)), 3),
    "server_cpu_s": round(cpu1 - cpu0, 3), "server_cpu_us_per_request": round((cpu1 - cpu0) / max(count, 1) * 1e6, 1),
    "server_cpu_share": round((cpu1 - cpu0) / elapsed, 3), "server_rss_mib": round(server_rss(), 1),
    "server_context_switches_per_request": round((switches1 - switches0) / max(count, 1), 2),
}), flush=True)
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,64", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring window per level")
    parser.add_argument("--client", choices=("grpc", "triton"), default="grpc", help="grpcio stubs (this venv) or tritonclient (.venv-tritonclient)")
    parser.add_argument("--server-cpu", default="0", help="taskset CPU list of the server ('' for none)")
    parser.add_argument("--client-cpu", default="1", help="taskset CPU list of the client ('' for none)")
    parser.add_argument("--server-python", default=sys.executable, help="python that runs fer-cloud (e.g. another checkout's venv)")
    parser.add_argument("--server-cwd", type=Path, default=ROOT, help="checkout whose cloud_server runs")
    parser.add_argument("--label", default="", help="a name for this server in the output")
    parser.add_argument("--server-module", default="cloud_server.cli", help="what runs as the server: fer-cloud, or fer_bench.measure.grpc_floor_server (a prebuilt answer: Python gRPC's own cost)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="an environment variable for the server alone (e.g. GRPC_EXPERIMENTS=...); repeatable")
    parser.add_argument("serve_args", nargs="*", help="extra fer-cloud serve options (after --)")
    args = parser.parse_args()

    def pinned(cpus: str, command: list[str]) -> list[str]:
        return (["taskset", "-c", cpus] if cpus else []) + command

    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready.json"
        command = [args.server_python, "-m", args.server_module, "serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready), "--threads", "1", "--log-level", "WARNING", *args.serve_args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.server_cwd), str(ROOT)])}
        env.update(pair.split("=", 1) for pair in args.server_env)
        started = time.perf_counter()
        server = subprocess.Popen(pinned(args.server_cpu, command), cwd=args.server_cwd, env=env, stdout=subprocess.DEVNULL)
        try:
            while not ready.exists():
                if server.poll() is not None or time.perf_counter() - started > 180:
                    raise SystemExit(f"fer-cloud did not start (exit code {server.poll()})")
                time.sleep(0.05)
            port = json.loads(ready.read_text())["port"]
            startup = time.perf_counter() - started
            script = Path(tmp) / "client.py"
            script.write_text(CLIENT)
            python = str(TRITON_PYTHON) if args.client == "triton" else sys.executable
            for clients in [int(c) for c in args.clients.split(",")]:
                done = subprocess.run(
                    pinned(args.client_cpu, [python, str(script), args.client, f"127.0.0.1:{port}", str(clients), str(args.seconds), str(server.pid)]),
                    cwd=ROOT, capture_output=True, text=True, timeout=args.seconds + 300,
                    env={**os.environ, "FER_MEASURE_MODEL": ATTENTION_MODEL},
                )
                if done.returncode != 0:
                    raise SystemExit(done.stderr)
                record = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps({"server": args.label or str(args.server_cwd), "startup_s": round(startup, 1), "load_avg": os.getloadavg()[0], **record}), flush=True)
        finally:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:  # it did not drain (e.g. stopped by a profiler): no server left behind
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
