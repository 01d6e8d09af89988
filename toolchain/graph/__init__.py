"""ONNX graphs: classifier I/O and metadata, exact rewrites (BatchNorm after ReLU), Q/DQ surgery."""
