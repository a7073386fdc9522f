"""The package's version, in a module of its own: the ONNX backend stamps it without importing the API."""

__version__ = "0.1.0"
