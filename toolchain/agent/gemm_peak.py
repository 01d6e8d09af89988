#!/usr/bin/env python3
"""Peak float32 GEMM throughput of this machine's cores, as numpy's BLAS reaches it: the ceiling that an
achieved GFLOP/s of a model is compared with.

Target-side: stdlib + numpy and its sibling `common` only, Python 3.5+ syntax (the host runs it here and on
a target from stdin with `common` loaded beside it, never imports it). The caller sets the BLAS thread count in the environment
(OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS) before this process imports numpy: a BLAS pool
cannot be resized reliably once started.

    OPENBLAS_NUM_THREADS=2 python3 gemm_peak.py --size 1024 --min-time 0.5

Protocol: C = A @ B with A, B random float32 N x N (C-contiguous), one untimed product, then products
until ``min-time`` seconds and at least ``repeats`` of them; FLOPs per product 2 N^3. The result is
the best product (the ceiling) and the median, in GFLOP/s, as one JSON line on stdout.
"""

import argparse
import os
import sys

import common


def measure(size, min_time, repeats):
    import numpy

    generator = numpy.random.RandomState(0)
    a = generator.standard_normal((size, size)).astype(numpy.float32)
    b = generator.standard_normal((size, size)).astype(numpy.float32)
    out = numpy.empty((size, size), dtype=numpy.float32)
    seconds = common.timed_repeats(lambda: numpy.dot(a, b, out=out), min_time, repeats)
    flops = 2.0 * size ** 3
    return {"size": size, "dtype": "float32", "products": len(seconds),
            "best_gflops": flops / seconds[0] / 1e9, "median_gflops": flops / seconds[len(seconds) // 2] / 1e9,
            "numpy": numpy.__version__,
            "threads_env": {name: os.environ.get(name) for name in
                            ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Peak float32 GEMM GFLOP/s with numpy (toolchain).")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return common.print_result(measure, options.size, options.min_time, options.repeats)


if __name__ == "__main__":
    sys.exit(main())
