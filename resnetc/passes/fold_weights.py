"""Compute at compile time the weights an inference graph would compute at run time.

An op that declares an `inference_op` (a weight-standardised convolution: `conv`) becomes that op, its weight
replaced by `inference_weights` of the stored one (the standardised filters, as the eval-mode module uses
them). Exact up to float rounding; the graph loses the arithmetic that recomputed a constant on every load
(BiT: ~800 nodes) and consumers that need a Conv's weight to be an initializer (onnx2torch) can read it. The
initializers keep the state_dict's names, holding the values the module computes from them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from resnetc import ops
from resnetc.core.ir import Graph
from resnetc.weights.arrays import Weights, checked_cast


@dataclass(frozen=True)
class FoldWeightsReport:
    folded: list[str]  # the nodes whose weights were computed

    def __str__(self) -> str:
        return f"fold_weights: {len(self.folded)} weight-standardised convolutions as plain ones"


def fold_weights(graph: Graph, weights: Weights) -> tuple[Graph, Weights, FoldWeightsReport]:
    """A new graph and weights in which every op with an `inference_op` is that op over computed weights."""
    nodes, folded = [], []
    new_weights = dict(weights)
    for node in graph.nodes:
        op = ops.get(node.op)
        if op.inference_op is None:
            nodes.append(node)
            continue
        target = ops.get(op.inference_op)
        assert target.fields is not None  # a spec op
        kept = set(target.fields.model_fields)
        changed = copy.copy(node)
        changed.op = op.inference_op
        changed.attrs = {key: value for key, value in node.attrs.items() if key in kept}
        key = f"{node.name}.weight"
        computed = op.inference_weights(node.attrs, np.asarray(weights[key]))
        new_weights[key] = checked_cast(f"{node.name}: computed weight", computed, np.float32)
        nodes.append(changed)
        folded.append(node.name)
    rewritten = Graph(graph.input_shape, nodes, graph.output, graph.features, graph.zeros_at_init)
    return rewritten, new_weights, FoldWeightsReport(folded)
