"""Backends: the IR rendered as PyTorch source, or built into an ONNX graph."""
