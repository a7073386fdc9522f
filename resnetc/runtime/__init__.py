"""onnxruntime sessions: honest provider choice, inference and latency measurement."""

from resnetc.runtime.session import BoundRunner, create_session, cuda_driver_present, infer, median_latency

__all__ = ["BoundRunner", "create_session", "cuda_driver_present", "infer", "median_latency"]
