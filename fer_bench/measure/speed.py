"""Measure: fer-cloud of any checkout under ``fer-bench server``'s load, for before/after comparisons. Not a test.

``fer-bench server`` measures this checkout's fer-cloud beside Triton. This script
runs ``fer-cloud serve`` from another checkout too (``--server-cwd`` with its own
``--server-python``), with environment variables and serve options of its own
(``--server-env``, options after ``--``), and loads it as ``fer-bench server``
does (:func:`fer_bench.server_load.measure`: the tritonclient closed loop,
``fer_attention`` FP32, the server and the client each pinned to a core, the
server's CPU time per request from /proc). Run it once per checkout, alternating,
and compare the CPU per request: it hardly depends on what else runs. Prints one
JSON line per concurrency and repeat.

    .venv/bin/python -m fer_bench.measure.speed --clients 1,64 --seconds 5
    .venv/bin/python -m fer_bench.measure.speed --server-python /old/.venv/bin/python --server-cwd /old --label old
    .venv/bin/python -m fer_bench.measure.speed --server-env GRPC_EXPERIMENTS= -- --max-queue-delay-ms 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

from fer_bench.processes import stop_process, wait_ready
from fer_bench.server_load import CLIENT, LoadSettings, RunningServer, measure

__all__ = ["main"]

ROOT = Path(__file__).resolve().parents[2]


def start_server(stack: ExitStack, args: argparse.Namespace, folder: Path) -> RunningServer:
    """``fer-cloud serve`` of ``args.server_cwd`` on loopback, pinned, one compute thread."""
    ready = folder / "ready.json"
    command = [
        args.server_python, "-m", "cloud_server.cli", "serve", "--host", "127.0.0.1", "--port", "0", "--ready-file", str(ready),
        "--threads", "1", "--log-level", "WARNING", *args.serve_args,
    ]
    env = {**os.environ, "PYTHONPATH": str(args.server_cwd)}
    env.update(pair.split("=", 1) for pair in args.server_env)
    pinned = (["taskset", "-c", args.server_cpu] if args.server_cpu else []) + command
    process = subprocess.Popen(pinned, cwd=args.server_cwd, env=env, stdout=subprocess.DEVNULL, start_new_session=True)
    stack.callback(stop_process, process)
    return RunningServer(args.label, f"127.0.0.1:{wait_ready(process, ready)}", process.pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1,64", help="comma-separated concurrency levels")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring window per point")
    parser.add_argument("--repeats", type=int, default=1, help="points per concurrency level")
    parser.add_argument("--server-cpu", default="0", help="taskset CPU list of the server ('' for none)")
    parser.add_argument("--client-cpu", default="1", help="taskset CPU list of the client ('' for none)")
    parser.add_argument("--server-python", default=sys.executable, help="python that runs fer-cloud (e.g. another checkout's venv)")
    parser.add_argument("--server-cwd", type=Path, default=ROOT, help="checkout whose cloud_server runs")
    parser.add_argument("--label", default="fer-cloud", help="a name for this server in the output")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE", help="an environment variable for the server alone; repeatable")
    parser.add_argument("serve_args", nargs="*", help="extra fer-cloud serve options (after --)")
    args = parser.parse_args()
    settings = LoadSettings(seconds=args.seconds, server_cpu=args.server_cpu, client_cpu=args.client_cpu)
    with tempfile.TemporaryDirectory(prefix="fer-speed-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        script = folder / "client.py"
        script.write_text(CLIENT)
        server = start_server(stack, args, folder)
        measure(server, replace(settings, seconds=min(2.0, args.seconds)), 4, True, -1, script)  # lazy starts, unrecorded
        for clients in [int(c) for c in args.clients.split(",")]:
            for repeat in range(args.repeats):
                record = measure(server, settings, clients, True, repeat, script)
                print(json.dumps({"load_avg": round(os.getloadavg()[0], 2), **asdict(record)}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
