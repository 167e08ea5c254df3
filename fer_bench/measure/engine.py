"""Measure: fer-cloud's engine alone (no gRPC), CPU microseconds per ``fer_attention`` request. Not a test.

The engine of the checkout on ``PYTHONPATH`` (pass another checkout's folder to
compare), on a uvloop event loop, with C coroutines each sending serialized FP32
``[1, 8, 28, 28]`` requests in a closed loop (a serialized request in, a
serialized response out, as the gRPC handler sees them), one thread, the
median of ``--repeats``. Prints one JSON line per concurrency.

    .venv/bin/python fer_bench/measure/engine.py
    PYTHONPATH=/old/checkout .venv/bin/python fer_bench/measure/engine.py --label old
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from cloud_server.engine import InferenceEngine  # noqa: E402
from shared_model.protocol import ATTENTION_MODEL, DATATYPE_FP32, FEATURES, pb  # noqa: E402

__all__ = ["main"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--requests", type=int, default=6400, help="requests per measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    import uvloop

    engine = InferenceEngine(runtime="onnx", threads=1)
    request = pb.ModelInferRequest(model_name=ATTENTION_MODEL)
    request.inputs.add(name=FEATURES, datatype=DATATYPE_FP32, shape=[1, 8, 28, 28])
    request.raw_input_contents.append(np.random.default_rng(0).standard_normal((1, 8, 28, 28)).astype(np.float32).tobytes())
    data = request.SerializeToString()

    if hasattr(engine, "infer_bytes_async"):  # an engine before its one path (InferenceEngine.infer)
        async def call() -> bytes:
            return await engine.infer_bytes_async(data, None)
    elif hasattr(engine, "infer_async"):  # an engine before cloud_server.wire: parse and serialize as gRPC did for it
        async def call() -> bytes:
            return (await engine.infer_async(pb.ModelInferRequest.FromString(data), None)).SerializeToString()
    else:
        async def call() -> bytes:
            return await engine.infer(data, None)

    async def client(count: int) -> None:
        for _ in range(count):
            await call()

    async def measure(concurrency: int, total: int) -> float:
        began = time.process_time()
        await asyncio.gather(*[client(total // concurrency) for _ in range(concurrency)])
        return (time.process_time() - began) / (total // concurrency * concurrency) * 1e6

    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        uvloop.run(measure(concurrency, 640))  # warm up
        runs = [uvloop.run(measure(concurrency, args.requests)) for _ in range(args.repeats)]
        print(json.dumps({"label": args.label, "concurrency": concurrency, "cpu_us_per_request": round(statistics.median(runs), 1), "runs": [round(r, 1) for r in runs]}), flush=True)
    engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
