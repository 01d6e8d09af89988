"""What RTMaps does with a Python-bridge component, imitated: load the file, Dynamic, Birth, Core per frame, Death.

Reactive: Core runs once for each frame that arrives. Sampling: Core runs on the diagram's clock and reads
the newest frame, so frames between two ticks are never seen and a tick without a new frame re-reads the
last one. Death runs whenever Birth ran, also after a failing Core (RTMaps shuts a component down that way).

Also a command line, so that a target runs it with its own Python (Python 3.5+ syntax, numpy only):

    python3 diagram.py COMPONENT.py GOLDEN.npz --output RESULT.json|- [--property NAME=VALUE ...]
                       [--as ipl|array] [--ticks N,N,...]

RESULT.json (or stdout): {"outputs": {name: [[ts, data], ...]}, "reports": [[level, text], ...], "reading_policy": ...},
or {"error": "..."} with exit status 1 when the component failed.
"""

import argparse
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import rtmaps.core  # noqa: E402
import rtmaps.reading_policy  # noqa: E402
import rtmaps.types  # noqa: E402


def load_component(path):
    """The file's `rtmaps_python` class, instantiated (RTMaps' Python bridge loads the class of that name)."""
    spec = importlib.util.spec_from_file_location("rtmaps_component_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.rtmaps_python()


class Diagram(object):
    """One component in a diagram whose only other part is the source of its `image` input."""

    def __init__(self, path, properties=None, input_name="image"):
        self.module, self.component = load_component(path)
        self.input_name = input_name
        self._dynamic()
        for name, value in sorted((properties or {}).items()):
            self.component.properties[name].set(value)
            self._dynamic()  # Studio re-runs Dynamic() after a property changes

    def _dynamic(self):
        self.component._in_dynamic = True
        try:
            self.component.Dynamic()
        finally:
            self.component._in_dynamic = False

    def run(self, samples, ticks=None):
        """Birth, then the samples (Ioelts) on the input, then Death. `ticks`: clock ticks after each sample (sampling)."""
        component = self.component
        component.Birth()
        try:
            for index, sample in enumerate(samples):
                component.inputs[self.input_name].ioelt = sample
                if component.reading_policy == rtmaps.reading_policy.SAMPLING:
                    for _ in range(ticks[index] if ticks is not None else 1):
                        component.Core()
                else:
                    component.Core()
        finally:
            component.Death()
        return {name: output.written for name, output in component.outputs.items()}


def golden_samples(golden, as_ipl, channel_seq="RGB"):
    """The golden frames as Ioelts on the wire: IplImages (image_data) or plain arrays, stamped with golden ts."""
    samples = []
    for frame, ts in zip(golden["frames"], golden["ts"]):
        data = rtmaps.types.IplImage(frame, "MONO" if frame.ndim == 2 else "COLR",
                                     "GRAY" if frame.ndim == 2 else channel_seq) if as_ipl else frame
        samples.append(rtmaps.types.Ioelt(data, int(ts)))
    return samples


def _plain(value):
    return np.asarray(value).tolist()


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("component")
    parser.add_argument("golden")
    parser.add_argument("--output", required=True)
    parser.add_argument("--property", action="append", default=[])
    parser.add_argument("--as", dest="as_", choices=("ipl", "array"), default="ipl")
    parser.add_argument("--ticks", default=None)
    args = parser.parse_args(argv)
    properties = dict(item.split("=", 1) for item in args.property)
    with np.load(args.golden, allow_pickle=False) as data:
        golden = {name: data[name] for name in data.files}
    ticks = [int(value) for value in args.ticks.split(",")] if args.ticks else None
    try:
        diagram = Diagram(args.component, properties)
        outputs = diagram.run(golden_samples(golden, args.as_ == "ipl"), ticks)
        document = {"outputs": {name: [[int(ts), _plain(data)] for ts, data in written]
                                for name, written in outputs.items()},
                    "reading_policy": diagram.component.reading_policy}
        status = 0
    except Exception as exc:  # the component's own failure is the result to report
        document, status = {"error": "{}: {}".format(type(exc).__name__, exc)}, 1
    document["reports"] = [list(item) for item in rtmaps.core.REPORTS]
    if args.output == "-":
        json.dump(document, sys.stdout)
    else:
        with open(args.output, "w") as handle:
            json.dump(document, handle)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
