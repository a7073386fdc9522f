"""The ops of resnetc, one definition each (see `base.Op`), collected in `registry.REGISTRY`.

To add an op: write one `Op` subclass with `@register` in the module of its kind (or a new module
imported below), then regenerate the schema and the README table (`python -m tools.docs`).
"""

# isort: off
# The order of these imports is the registry's order: the schema's, the README table's, the hints'.
from resnetc.ops import conv, norm, activation, pool, dense, regularization, merge, structure  # noqa: F401

# isort: on
from resnetc.ops.base import Expansion, Op
from resnetc.ops.registry import REGISTRY, expansion, get, spec_op_names, spec_ops

__all__ = ["REGISTRY", "Expansion", "Op", "expansion", "get", "spec_op_names", "spec_ops"]
