#!/usr/bin/env python3
"""Peak integer GEMM throughput of this machine's cores, as onnxruntime's own INT8 kernels reach it: the
ceiling that an INT8 model's achieved rate is compared with.

Target-side: stdlib + numpy + onnxruntime and its sibling `common` only, Python 3.5+ syntax (the host runs it
here and on a target from stdin with `common` loaded beside it, never imports it). The target has no `onnx`
package: the host builds the model (one MatMulInteger node, uint8 A x int8 B -> int32, B an initializer held
in an external-data file so that the model itself is a few hundred bytes) with the onnx package and passes
its bytes in base64 as an argument; this script writes B's bytes with numpy beside the model in a temporary
folder, so that B is a real initializer that onnxruntime pre-packs, as it does a quantized conv's weights.

    python3 qgemm_peak.py --size 1024 --threads 1 --min-time 0.5 --weights qgemm_b.bin --model-base64 CAcS...

Protocol: Y = MatMulInteger(A, B, a_zero_point) with A random uint8 N x N (a feed), B random int8 N x N
(the initializer), one untimed run, then runs until ``min-time`` seconds and at least ``repeats`` of them, with
``intra_op_num_threads = threads`` (the bench's thread count) and onnxruntime's default optimisation. Integer
ops per product: 2 N^3 (a multiply and an add per MAC, as FLOPs are counted). The result is the best run (the
ceiling) and the median, in GOP/s, as one JSON line on stdout.
"""

import argparse
import base64
import os
import shutil
import sys

import common


def measure(size, threads, model, weights, min_time, repeats):
    import numpy
    import onnxruntime

    generator = numpy.random.RandomState(0)
    a = generator.randint(0, 256, (size, size)).astype(numpy.uint8)
    folder = common.scratch_folder("qgemm")
    try:
        generator.randint(-128, 128, (size, size)).astype(numpy.int8).tofile(os.path.join(folder, weights))
        path = os.path.join(folder, "qgemm.onnx")
        with open(path, "wb") as handle:
            handle.write(model)
        session = common.cpu_session(path, threads)
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the session holds B (pre-packed) in memory now
    feeds = {session.get_inputs()[0].name: a}
    seconds = common.timed_repeats(lambda: session.run(None, feeds), min_time, repeats)
    ops = 2.0 * size ** 3
    return {"size": size, "dtype": "uint8 x int8 -> int32", "op": "MatMulInteger", "threads": threads,
            "products": len(seconds), "best_gops": ops / seconds[0] / 1e9,
            "median_gops": ops / seconds[len(seconds) // 2] / 1e9, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Peak INT8 GEMM GOP/s with onnxruntime's MatMulInteger (toolchain).")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model-base64", required=True, help="the MatMulInteger model's bytes, base64")
    parser.add_argument("--weights", required=True, help="the external-data file name the model's B refers to")
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if os.path.basename(options.weights) != options.weights or options.weights in ("", ".", ".."):
        parser.error("--weights must be a plain file name")
    model = base64.b64decode(options.model_base64.encode("ascii"))
    return common.print_result(measure, options.size, options.threads, model, options.weights, options.min_time,
                               options.repeats)


if __name__ == "__main__":
    sys.exit(main())
