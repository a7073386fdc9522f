"""What a model costs: parameters, MACs, depth, and a per-stage table."""

from __future__ import annotations

from dataclasses import dataclass

from resnetc import ops
from resnetc.core.ir import Model, Node, Shape
from resnetc.ops import Expansion


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    output: Shape
    params: int
    macs: int
    block: str | None = None  # stages only
    repeat: int | None = None

    @property
    def kind(self) -> str:
        return f"{self.block} x{self.repeat}" if self.block else self.op


@dataclass(frozen=True)
class Summary:
    name: str
    params: int
    macs: int
    layers: int  # weighted layers on the main path, as He et al. count them
    convolutions: int  # every convolution, shortcut projections included (WRN's depth counts these)
    input: Shape
    output: Shape
    rows: list[Row]
    spec: str = ""  # the spec's file name
    paper: dict[str, object] | None = None  # what a paper reports, from the spec's `paper:` entry
    outputs: list[dict[str, object]] | None = None  # a backbone's features: name, shape, stride

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "params": self.params,
            "macs": self.macs,
            "layers": self.layers,
            "convolutions": self.convolutions,
            "input": list(self.input),
            "output": list(self.output),
            "stages": [
                {"name": row.name, "op": row.op, "output": list(row.output), "params": row.params, "macs": row.macs}
                | ({"block": row.block, "repeat": row.repeat} if row.block else {})
                for row in self.rows
            ],
            "paper": self.paper,
        } | ({"outputs": self.outputs} if self.outputs else {})


def _belongs(node: Node, layer: str) -> bool:
    return node.name == layer or node.name.startswith(layer + ".")


def summarize(model: Model) -> Summary:
    nodes = model.graph.nodes
    rows = []
    for layer in model.body.layers:
        members = [node for node in nodes if _belongs(node, layer.name)]
        rows.append(
            Row(
                layer.name,
                layer.op,
                model.body_shapes[layer.name],
                sum(node.param_count for node in members),
                sum(node.macs for node in members),
                layer.block,
                len(model.stages[layer.name]) if ops.expansion(layer.op) is Expansion.BLOCKS else None,
            )
        )
    return Summary(
        name=model.class_name,
        params=sum(node.param_count for node in nodes),
        macs=sum(node.macs for node in nodes),
        layers=sum(1 for node in nodes if ops.get(node.op).counts_as_layer and not node.shortcut),
        convolutions=sum(1 for node in nodes if ops.get(node.op).is_convolution),
        input=model.input_shape,
        output=model.graph.output_shape,
        rows=rows,
        spec=model.file_name,
        paper=model.paper,
        outputs=model.feature_info() if model.is_backbone else None,
    )


def _align(lines: list[tuple[str, ...]], right: set[int]) -> list[str]:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    aligned = []
    for line in lines:
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]) for i, cell in enumerate(line)]
        aligned.append("  ".join(cells).rstrip())
    return aligned


def format_table(summary: Summary) -> str:
    """The per-layer table of one model, with totals."""
    header = ("layer", "op", "output", "params", "MACs")
    rows = [(row.name, row.kind, _shape(row.output), f"{row.params:,}", f"{row.macs:,}") for row in summary.rows]
    layers = f"{summary.layers} layers"
    total = ("total", layers, _shape(summary.output), f"{summary.params:,}", f"{summary.macs:,}")
    aligned = _align([header, *rows, total], right={3, 4})
    rule = "-" * max(len(line) for line in aligned)
    lines = [f"{summary.name} (input {_shape(summary.input)})", aligned[0], rule, *aligned[1:-1], rule, aligned[-1]]
    if summary.outputs:
        features = [(str(item["name"]), _shape(item["shape"]), f"stride {item['stride']}") for item in summary.outputs]
        lines += ["outputs (a backbone's features, in the order forward returns them):"]
        lines += ["  " + line for line in _align(features, right=set())]
    return "\n".join(lines)


def _shape(shape: Shape) -> str:
    return "x".join(map(str, shape))


def format_family_table(summaries: list[Summary]) -> str:
    """One row per spec: depth, params and MACs, with the paper's figures beside them where it gives them."""
    header = ("spec", "layers", "convs", "params", "GMACs", "paper layers", "paper params", "paper FLOPs", "source")
    lines = [header]
    for summary in summaries:
        paper = summary.paper or {}
        lines.append(
            (
                summary.spec.removesuffix(".yaml"),
                str(summary.layers),
                str(summary.convolutions),
                f"{summary.params:,}",
                f"{summary.macs / 1e9:.3f}",
                str(paper.get("layers") or ""),
                str(paper.get("params") or ""),
                str(paper.get("flops") or ""),
                str(paper.get("source") or ""),
            )
        )
    aligned = _align(lines, right={1, 2, 3, 4, 5, 6, 7})
    return "\n".join([aligned[0], "-" * max(len(line) for line in aligned), *aligned[1:]])
