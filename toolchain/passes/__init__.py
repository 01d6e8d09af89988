"""The built-in passes; importing this package registers them (`toolchain.pipeline.passes.register_pass`).

    export     torch checkpoint -> ONNX (opset, exporter)            import-onnx  a foreign ONNX classifier
    simplify   onnxsim                                              batchnorm    fold the BatchNorms after ReLUs
    quantize   calibrate once, static INT8 with every node quantized
    gate       keep the most sensitive nodes in float until the INT8 drop is within --max-drop
    package    the artifact folder: both models, the eval set, quick latency, the manifest
"""

from toolchain.passes import batchnorm, export, gate, import_onnx, package, quantize, simplify

__all__ = ["batchnorm", "export", "gate", "import_onnx", "package", "quantize", "simplify"]
