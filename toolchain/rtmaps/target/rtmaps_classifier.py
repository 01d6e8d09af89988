# -*- coding: utf-8 -*-
"""RTMaps Python-bridge component: one image classifier from a toolchain artifact (onnxruntime on the CPU).

Written by `toolchain rtmaps` (or `toolchain deploy --rtmaps`) from this template; the artifact's facts are the
JSON text in CONFIG_JSON below (data, never code). Needs only numpy and onnxruntime beside RTMaps' Python
bridge, Python 3.5+ syntax.

    input   image        an IplImage (.image_data H x W or H x W x C, .channel_seq) or a plain ndarray
                         (H x W or H x W x C), uint8 (0-255) or float (0-1)
    outputs class_id     top-1 class index (INTEGER32)
            scores       the model's logits, one per class (FLOAT32 vector)
            inference_ms wall time of the onnxruntime run of this frame (FLOAT64)
            every output carries the timestamp of the frame it answers
    properties model_path     the .onnx file (default: the INT8 model beside this folder); its sha256 must be
                              one the artifact's manifest lists (INT8 or FP32), checked at Birth
               threads        onnxruntime intra-op threads (0: onnxruntime's default)
               reading_policy reactive (one Core per frame) or sampling (Core on RTMaps' clock, latest frame)

A frame is preprocessed as the artifact's eval set was (CONFIG["preprocessing"]): channels to the model's
(BGR/RGBA reordered, colour to grey with Pillow's integer luma weights, grey to colour by copying),
uint8 / 255 (a float frame is taken as already in 0-1), the dataset's padding around the stored size
(a frame of the stored size is laid out exactly as the eval images were; a frame of the model's input
size is taken as laid out already; any other size is first resampled to the stored size by pixel area,
a step the eval set never needed), then (x - mean) / std in float32, NCHW.
"""

import hashlib
import json
import os
import time

import numpy as np

import rtmaps.core as rt
import rtmaps.reading_policy
import rtmaps.types
from rtmaps.base_component import BaseComponent

CONFIG_JSON = "{}"
CONFIG = json.loads(CONFIG_JSON)

READING_POLICIES = ("reactive", "sampling")
# ITU-R 601-2 luma in Pillow's fixed point ("L" conversion): (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
_LUMA_FIXED = (19595, 38470, 7471)


class FrameError(ValueError):
    """A frame this component cannot turn into the model's input (its shape, type or channels)."""


def frame_pixels(data):
    """The pixel array of a frame and its channel order: an IplImage's image_data, or the ndarray itself."""
    if hasattr(data, "image_data"):
        return np.asarray(data.image_data), str(getattr(data, "channel_seq", "") or "").upper()
    if isinstance(data, np.ndarray):
        return data, ""
    raise FrameError("a frame must be an IplImage or a numpy array, not {}".format(type(data).__name__))


def _as_hwc(pixels):
    if pixels.ndim == 2:
        return pixels[:, :, None]
    if pixels.ndim == 3 and pixels.shape[2] in (1, 3, 4):
        return pixels
    raise FrameError("a frame must be H x W or H x W x C with C in 1, 3, 4; got shape {}".format(
        list(pixels.shape)))


def unit_range(pixels):
    """float32 pixels in 0-1: uint8 divided by 255 (as the eval set was), float taken as already in 0-1."""
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(pixels.dtype, np.floating):
        return pixels.astype(np.float32)
    raise FrameError("frame pixels must be uint8 or float, not {}".format(pixels.dtype))


def to_channels(pixels, channel_seq, channels):
    """H x W x C pixels (uint8 or float) with `channels` channels in RGB order (or grey)."""
    pixels = _as_hwc(pixels)
    if pixels.shape[2] >= 3:
        if channel_seq.startswith("BGR"):
            pixels = pixels[:, :, 2::-1]
        elif channel_seq.startswith("ARGB"):
            pixels = pixels[:, :, 1:4]
        else:
            pixels = pixels[:, :, :3]
    if pixels.shape[2] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=2)
    if channels != 1:
        raise FrameError("the model takes {} channels; frames have 1 or 3".format(channels))
    if pixels.dtype == np.uint8:
        weighted = sum(pixels[:, :, k].astype(np.uint32) * _LUMA_FIXED[k] for k in range(3))
        return ((weighted + 0x8000) >> 16).astype(np.uint8)[:, :, None]
    luma = sum(pixels[:, :, k].astype(np.float64) * (_LUMA_FIXED[k] / 65536.0) for k in range(3))
    return luma.astype(pixels.dtype)[:, :, None]


def _area_weights(size_in, size_out):
    """size_out x size_in: each output pixel the mean of the input it covers (pixel-area overlap; rows sum to 1)."""
    scale = float(size_in) / size_out
    edges = np.arange(size_out + 1) * scale
    low, high = edges[:-1, None], edges[1:, None]
    taps = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(high, taps + 1) - np.maximum(low, taps), 0.0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resample(pixels, height, width):
    """H x W x C float pixels resampled to height x width by pixel area (a block-replicated frame comes back exactly)."""
    rows = _area_weights(pixels.shape[0], height)
    cols = _area_weights(pixels.shape[1], width)
    out = np.einsum("ih,hwc,jw->ijc", rows, pixels.astype(np.float64), cols)
    return out.astype(np.float32)


def preprocess(data, spec):
    """One frame -> the model's 1 x C x H x W float32 input, as CONFIG["preprocessing"] (`spec`) describes."""
    pixels, channel_seq = frame_pixels(data)
    pixels = to_channels(pixels, channel_seq, spec["channels"])
    x = unit_range(pixels)
    height, width = spec["height"], spec["width"]
    stored = spec["stored"]
    top, bottom, left, right = spec["pad"]
    if list(x.shape[:2]) != stored and list(x.shape[:2]) != [height, width]:
        x = resample(x, stored[0], stored[1])
    if list(x.shape[:2]) == stored and (top or bottom or left or right):
        fill = np.float32(spec["pad_value"]) / np.float32(255.0)
        x = np.pad(x, ((top, bottom), (left, right), (0, 0)), mode="constant", constant_values=fill)
    mean = np.asarray(spec["mean"], dtype=np.float32)
    std = np.asarray(spec["std"], dtype=np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model(path):
    """The variant ("int8" or "fp32") the model file at `path` is, by its sha256; ValueError naming the file if none."""
    if not os.path.isfile(path):
        raise ValueError("model_path {!r}: no such file (the artifact's models are {})".format(
            path, ", ".join(sorted(CONFIG["models"]))))
    actual = sha256_file(path)
    for name, record in sorted(CONFIG["models"].items()):
        if record["sha256"] == actual:
            return record["variant"]
    known = ", ".join("{} {}...".format(name, record["sha256"][:12]) for name, record in sorted(CONFIG["models"].items()))
    raise ValueError("model_path {!r} has sha256 {}..., which is none of artifact {}'s models ({}): point "
                     "model_path at that artifact's model, or regenerate the component with `toolchain rtmaps "
                     "--artifact FOLDER` for this model's artifact".format(path, actual[:12], CONFIG["artifact_id"],
                                                                             known))


def open_session(path, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    except TypeError:  # onnxruntime before 1.6 has no providers argument; its default is the CPU
        return onnxruntime.InferenceSession(path, options)


class rtmaps_python(BaseComponent):
    """The classifier of artifact CONFIG["artifact_id"]: one frame in, class id, logits and time out."""

    def __init__(self):
        BaseComponent.__init__(self)
        # the default; Dynamic() switches to the policy the property names
        self.force_reading_policy(rtmaps.reading_policy.REACTIVE)
        self.session = None
        self.variant = None
        self.last_ts = None

    def Dynamic(self):
        self.add_input("image", rtmaps.types.ANY)
        self.add_output("class_id", rtmaps.types.INTEGER32)
        self.add_output("scores", rtmaps.types.FLOAT32, len(CONFIG["class_names"]))
        self.add_output("inference_ms", rtmaps.types.FLOAT64)
        self.add_property("model_path", CONFIG["default_model_path"])
        self.add_property("threads", 1)
        self.add_property("reading_policy", "{}|0|{}".format(len(READING_POLICIES), "|".join(READING_POLICIES)),
                          rtmaps.types.ENUM)
        if self.properties["reading_policy"].get_selected_value() == "sampling":
            self.force_reading_policy(rtmaps.reading_policy.SAMPLING)

    def Birth(self):
        path = str(self.properties["model_path"].data)
        threads = int(self.properties["threads"].data)
        if threads < 0:
            raise ValueError("threads must be 0 (onnxruntime's default) or more, not {}".format(threads))
        self.variant = check_model(path)
        self.session = open_session(path, threads)
        names = [item.name for item in self.session.get_inputs()]
        if names != [CONFIG["input_name"]]:
            raise ValueError("model_path {!r} takes inputs {}, the artifact's model takes {!r}".format(
                path, names, CONFIG["input_name"]))
        self.last_ts = None
        rt.report_info("{} {} ({}) loaded from {} with {} thread(s)".format(
            CONFIG["model"], CONFIG["artifact_id"], self.variant, path, threads or "default"))

    def Core(self):
        ioelt = self.inputs["image"].ioelt
        if ioelt is None:
            return
        ts = ioelt.ts
        if self.last_ts is not None and ts == self.last_ts:
            return  # sampling read the frame it answered already
        x = preprocess(ioelt.data, CONFIG["preprocessing"])
        started = time.perf_counter()
        logits = self.session.run(None, {CONFIG["input_name"]: x})[0]
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        scores = np.asarray(logits, dtype=np.float32).reshape(-1)
        self.last_ts = ts
        self._write("class_id", int(np.argmax(scores)), ts)
        self._write("scores", scores, ts)
        self._write("inference_ms", float(elapsed_ms), ts)

    def _write(self, name, data, ts):
        out = rtmaps.types.Ioelt()
        out.ts = ts
        out.data = data
        self.outputs[name].write(out)

    def Death(self):
        self.session = None
        self.variant = None
