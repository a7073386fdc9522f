"""Drawings of a model: stages and blocks with the tensor shape on every edge (Mermaid or Graphviz dot).

Each stage is a subgraph (collapsible in viewers that fold subgraphs) holding one node per block;
other top-level layers are nodes of their own. Shapes are at the spec's input size.
"""

from __future__ import annotations

from resnetc import ops
from resnetc.core.ir import Model, Shape
from resnetc.ops import Expansion


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def _items(model: Model) -> tuple[list[tuple[str, str, str | None]], list[tuple[str, str, Shape]]]:
    """Nodes (id, label, stage or None) and edges (from, to, shape) from the input to the logits."""
    nodes: list[tuple[str, str, str | None]] = [("input", f"input N x {_shape(model.input_shape)}", None)]
    edges: list[tuple[str, str, Shape]] = []
    ends: dict[str, tuple[str, Shape]] = {"input": ("input", model.input_shape)}  # value -> (node, shape)
    shapes = {node.name: node.shape for node in model.graph.nodes}
    for layer in model.body.layers:
        sources = [ends[name] for name in layer.inputs]
        if ops.expansion(layer.op) is not Expansion.BLOCKS:
            nodes.append((layer.name, f"{layer.name}: {layer.op}", None))
            edges += [(node, layer.name, shape) for node, shape in sources]
            ends[layer.name] = (layer.name, model.body_shapes[layer.name])
            continue
        block = model.blocks[layer.block]  # type: ignore[index]
        for index, instance in enumerate(model.stages[layer.name]):
            node = f"{layer.name}.{index}"
            stride = instance.args.get("stride", 1)
            nodes.append((node, f"{node}: {block.class_name}" + (f" /{stride}" if stride != 1 else ""), layer.name))
            edges += [(source, node, shape) for source, shape in sources]
            sources = [(node, shapes.get(f"{node}.{block.output}", model.body_shapes[layer.name]))]
        ends[layer.name] = sources[0]
    last, shape = ends[model.body.output]
    nodes.append(("logits", f"logits N x {model.num_classes}", None))
    edges.append((last, "logits", shape))
    return nodes, edges


def _stage_title(model: Model, stage: str) -> str:
    layer = model.body.layer(stage)
    return f"{stage}: {layer.block} x{len(model.stages[stage])}"


def _node_id(name: str) -> str:
    return "n_" + name.replace(".", "_")


def mermaid(model: Model) -> str:
    nodes, edges = _items(model)
    lines = ["flowchart TD"]
    stage = None
    for node, label, owner in nodes:
        if owner != stage:
            if stage is not None:
                lines.append("  end")
            if owner is not None:
                lines.append(f'  subgraph {_node_id(owner)}_stage ["{_stage_title(model, owner)}"]')
            stage = owner
        lines.append(f'  {"  " if owner else ""}{_node_id(node)}["{label}"]')
    if stage is not None:
        lines.append("  end")
    lines += [f'  {_node_id(first)} -->|"{_shape(shape)}"| {_node_id(second)}' for first, second, shape in edges]
    return "\n".join(lines) + "\n"


def dot(model: Model) -> str:
    nodes, edges = _items(model)
    lines = [f'digraph "{model.class_name}" {{', "  rankdir=TB;", '  node [shape=box, fontname="Helvetica"];']
    stages: dict[str, list[str]] = {}
    for node, label, owner in nodes:
        statement = f'{_node_id(node)} [label="{label}"];'
        if owner is None:
            lines.append("  " + statement)
        else:
            stages.setdefault(owner, []).append(statement)
    for owner, statements in stages.items():
        lines += [f"  subgraph cluster_{_node_id(owner)} {{", f'    label="{_stage_title(model, owner)}";']
        lines += [f"    {statement}" for statement in statements] + ["  }"]
    lines += [f'  {_node_id(first)} -> {_node_id(second)} [label="{_shape(shape)}"];' for first, second, shape in edges]
    lines.append("}")
    return "\n".join(lines) + "\n"
