"""Reading specs: YAML with source positions, validated by pydantic models."""

from resnetc.spec.load import load_spec, load_spec_text
from resnetc.spec.models import Spec

__all__ = ["Spec", "load_spec", "load_spec_text"]
