"""Fold each BatchNorm into the convolution that feeds it (eval-mode inference only).

    y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta
      = conv'(x) + b'   with   W' = W * s,  b' = (b - mean) * s + beta,  s = gamma / sqrt(var + eps)

Exact up to float rounding in eval mode. The folded weights no longer carry the state_dict's
names and values (the BatchNorm's tensors disappear, the convolution gains a bias), which is why
`--fold-bn` is off by default.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from resnetc import ops
from resnetc.core.ir import Graph
from resnetc.weights.arrays import Weights, checked_cast


@dataclass(frozen=True)
class FoldReport:
    folded: list[tuple[str, str]]  # (convolution, batchnorm) pairs

    def __str__(self) -> str:
        return f"fold_batchnorm: folded {len(self.folded)} BatchNorm layers into their convolutions"


def fold_batchnorm(graph: Graph, weights: Weights) -> tuple[Graph, Weights, FoldReport]:
    """A new graph and weights in which every conv -> batchnorm pair (the conv read by nothing else) is one conv."""
    readers: dict[str, int] = {}
    for node in graph.nodes:
        for value in node.inputs:
            readers[value] = readers.get(value, 0) + 1
    producers = {node.name: node for node in graph.nodes}
    renamed: dict[str, str] = {}  # a folded BatchNorm's output -> the convolution that now produces it
    folded: list[tuple[str, str]] = []
    nodes = []
    new_weights = dict(weights)
    for node in graph.nodes:
        source = producers.get(node.inputs[0]) if node.inputs else None
        foldable = (
            ops.get(node.op).folds_into_convolution
            and source is not None
            and ops.get(source.op).is_convolution
            and readers.get(source.name) == 1
            and source.name not in graph.outputs.values()
        )
        if not foldable:
            nodes.append(_rewire(node, renamed))
            continue
        conv = next(n for n in nodes if n.name == source.name)
        variance = weights[f"{node.name}.running_var"].astype(np.float64)
        scale = weights[f"{node.name}.weight"] / np.sqrt(variance + node.attrs["eps"])
        bias = weights.get(f"{conv.name}.bias", np.zeros_like(scale))
        # In float64, then checked as float32: a tiny running_var makes a scale float32 cannot hold.
        folded_weight = weights[f"{conv.name}.weight"].astype(np.float64) * scale[:, None, None, None]
        folded_bias = (bias - weights[f"{node.name}.running_mean"]) * scale + weights[f"{node.name}.bias"]
        where = f"{conv.name} folded with {node.name}"
        new_weights[f"{conv.name}.weight"] = checked_cast(f"{where}: weight", folded_weight, np.float32)
        new_weights[f"{conv.name}.bias"] = checked_cast(f"{where}: bias", folded_bias, np.float32)
        for key in ("weight", "bias", "running_mean", "running_var"):
            del new_weights[f"{node.name}.{key}"]
        conv.attrs = {**conv.attrs, "bias": True}
        conv.params = {**conv.params, "bias": (conv.params["weight"][0],)}
        renamed[node.name] = conv.name
        folded.append((conv.name, node.name))
    output = renamed.get(graph.output, graph.output)
    features = {name: renamed.get(value, value) for name, value in graph.features.items()}
    return Graph(graph.input_shape, nodes, output, features, graph.zeros_at_init), new_weights, FoldReport(folded)


def _rewire(node, renamed: dict[str, str]):
    copied = copy.copy(node)
    copied.inputs = tuple(renamed.get(value, value) for value in node.inputs)
    return copied
