#!/usr/bin/env python3
"""Streaming memory bandwidth of this machine as numpy reaches it: the other ceiling of a roofline.

Target-side: stdlib + numpy and its sibling `common` only, Python 3.5+ syntax (the host runs it here and on a
target from stdin with `common` loaded beside it, never imports it).

    python3 bandwidth.py --megabytes 64 --min-time 0.5

Protocol (STREAM's "copy"): B[:] = A for float32 arrays of ``megabytes`` MiB each, far beyond the caches;
one untimed copy, then copies until ``min-time`` seconds and at least ``repeats`` of them. Bytes per copy:
2 x the array (one read, one write, as STREAM counts; a write-allocate cache reads the destination too, so
the bus may carry more). numpy copies on one thread: this is one core's bandwidth, the ceiling of a
one-thread profile. The result is the best copy (the ceiling) and the median, in GB/s (1e9 bytes), as one
JSON line on stdout.
"""

import argparse
import sys

import common


def measure(megabytes, min_time, repeats):
    import numpy

    count = megabytes * (1 << 20) // 4
    source = numpy.ones(count, dtype=numpy.float32)
    target = numpy.empty_like(source)
    seconds = common.timed_repeats(lambda: numpy.copyto(target, source), min_time, repeats)
    moved = 2.0 * source.nbytes
    return {"megabytes": megabytes, "copies": len(seconds), "best_gbps": moved / seconds[0] / 1e9,
            "median_gbps": moved / seconds[len(seconds) // 2] / 1e9, "numpy": numpy.__version__}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Streaming copy bandwidth with numpy, GB/s (toolchain).")
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--min-time", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return common.print_result(measure, options.megabytes, options.min_time, options.repeats)


if __name__ == "__main__":
    sys.exit(main())
