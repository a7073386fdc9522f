"""What a model costs: parameters, MACs, depth, and a per-stage table."""

from __future__ import annotations

from dataclasses import dataclass

from resnetc.ir.graph import Model, Node, Shape

WEIGHTED_LAYERS = ("conv", "linear")


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
    input: Shape
    output: Shape
    rows: list[Row]

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "params": self.params,
            "macs": self.macs,
            "layers": self.layers,
            "input": list(self.input),
            "output": list(self.output),
            "stages": [
                {"name": row.name, "op": row.op, "output": list(row.output), "params": row.params, "macs": row.macs}
                | ({"block": row.block, "repeat": row.repeat} if row.block else {})
                for row in self.rows
            ],
        }


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
                int(layer.attrs["repeat"]) if layer.op == "stage" else None,  # type: ignore[arg-type]
            )
        )
    return Summary(
        name=model.class_name,
        params=sum(node.param_count for node in nodes),
        macs=sum(node.macs for node in nodes),
        layers=sum(1 for node in nodes if node.op in WEIGHTED_LAYERS and not node.shortcut),
        input=model.input_shape,
        output=model.graph.output_shape,
        rows=rows,
    )


def format_table(summary: Summary) -> str:
    header = ("layer", "op", "output", "params", "MACs")
    lines = [header] + [
        (row.name, row.kind, "x".join(map(str, row.output)), f"{row.params:,}", f"{row.macs:,}") for row in summary.rows
    ]
    lines.append(
        (
            "total",
            f"{summary.layers} layers",
            "x".join(map(str, summary.output)),
            f"{summary.params:,}",
            f"{summary.macs:,}",
        )
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    aligned = []
    for index, line in enumerate(lines):
        cells = [line[i].ljust(widths[i]) if i < 3 else line[i].rjust(widths[i]) for i in range(len(header))]
        aligned.append("  ".join(cells).rstrip())
        if index == 0 or index == len(lines) - 2:
            aligned.append("  ".join("-" * width for width in widths))
    input_shape = "x".join(map(str, summary.input))
    return f"{summary.name} (input {input_shape})\n" + "\n".join(aligned)
