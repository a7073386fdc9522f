"""The ONNX backend: the IR and named weights built into a ModelProto, int8 quantization of that proto, and
Triton model repositories around it. Never imports torch."""
