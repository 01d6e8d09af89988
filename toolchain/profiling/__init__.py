"""`toolchain profile`: per-layer figures of an artifact's graph, joined with onnxruntime's per-node profile of
FP32 and INT8 here and on a target; roofline data per machine (docs/profile.md). Import the submodules."""
