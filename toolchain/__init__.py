"""toolchain: from a PyTorch CNN to a measured, quantized ONNX model on an embedded ARM box."""

__version__ = "0.1.0"
