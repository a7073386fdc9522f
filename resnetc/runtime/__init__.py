"""onnxruntime sessions: honest provider choice, inference and latency measurement."""

from resnetc.runtime.session import create_session, cuda_driver_present, infer, median_latency

__all__ = ["create_session", "cuda_driver_present", "infer", "median_latency"]
