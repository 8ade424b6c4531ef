#!/usr/bin/env python3
"""Run an ONNX graph in Python onnxruntime: tensors in and out as JSON, or time it.

    python3 scripts/onnx/run.py < request.json > outputs.json

request.json: {"graph": "path/to/x.onnx", "threads": 1,
               "inputs": {"input_ids": {"dtype": "int64", "shape": [1, 3], "data": [101, 7592, 102]}},
               "repeat": 0}

Writes {"outputs": {name: {"shape": [...], "data": [...]}}, "seconds": [...]}. With "repeat" > 0
the graph also runs that many more times and "seconds" holds each run's wall time (after the
first, which warms up): the tests use it to check graphs against reference embeddings with the
same ONNX Runtime the host loads, and the benchmarks to time the same .onnx file outside imbed
with the same thread count (host/benches/clip.rs, minilm.rs).
"""

import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    request = json.load(sys.stdin)
    options = ort.SessionOptions()
    threads = int(request.get("threads", 1))
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(request["graph"], options, providers=["CPUExecutionProvider"])
    feeds = {
        name: np.asarray(t["data"], dtype=t["dtype"]).reshape(t["shape"])
        for name, t in request["inputs"].items()
    }
    outputs = session.run(None, feeds)
    seconds = []
    for _ in range(int(request.get("repeat", 0))):
        start = time.perf_counter()
        session.run(None, feeds)
        seconds.append(time.perf_counter() - start)
    names = [o.name for o in session.get_outputs()]
    json.dump(
        {
            "onnxruntime": ort.__version__,
            "outputs": {
                n: {"shape": list(v.shape), "data": v.astype(np.float64).ravel().tolist()}
                for n, v in zip(names, outputs)
            },
            "seconds": seconds,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
