"""Static INT8 with onnxruntime.quantization: the ORT wrapper, node sensitivity, the accuracy gate's search."""
