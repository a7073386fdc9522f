"""The IR: symbolic scopes (block types and the model body) and the concrete graph they lower to.

A `Scope` keeps a block's layers with their integer expressions, which the PyTorch backend
renders as a class. The `Graph` holds one concrete `Node` per layer instance, with dotted
module names (hence state_dict keys), every tensor's shape, parameter shapes and MACs.
The IR imports no backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from resnetc.core.errors import Location
from resnetc.core.expr import Const, Expr, substitute
from resnetc.core.source import Path as DocPath
from resnetc.core.source import SourceMap

Shape = tuple[int, ...]  # one sample's shape: (C, H, W) or (features,); the batch is implicit
AttrValue = Expr | bool | float | str | None


@dataclass(frozen=True)
class Origin:
    """Where a layer was written, so that errors found late still point at the spec."""

    source: SourceMap
    path: DocPath

    def at(self, key: str | None = None) -> Location:
        return self.source.value((*self.path, key)) if key is not None else self.source.value(self.path)


@dataclass(frozen=True)
class LayerIR:
    """One layer of a scope, before instantiation: attributes may be expressions."""

    name: str
    op: str
    inputs: tuple[str, ...]  # names in the scope: "input" or an earlier layer
    attrs: dict[str, AttrValue]
    origin: Origin
    block: str | None = None  # stage and submodule: which block type it instantiates
    args: dict[str, Expr | float] = field(default_factory=dict)  # submodule: its arguments; stage: the keys given
    module: str | None = None  # applies the module of this earlier layer (`module:` in the spec)
    per_block: tuple[dict[str, int | float], ...] = ()  # top-level stage: each block's own arguments
    first: dict[str, int | float] = field(default_factory=dict)  # stage: the first block's own arguments
    first_block: str | None = None  # stage: the first block's own type, where it differs

    def block_at(self, index: int) -> str | None:
        """The block type of a stage's block `index`."""
        return self.first_block if index == 0 and self.first_block else self.block

    @property
    def module_name(self) -> str:
        """The module attribute that computes this layer: its own, or the one it applies again."""
        return self.module or self.name


@dataclass(frozen=True)
class Scope:
    """A block type (or the model body): parameters, layers and symbolic channel counts."""

    name: str
    class_name: str
    doc: str
    params: dict[str, int | float | None]  # in declaration order; None means required; floats are rates
    lets: dict[str, Expr]  # derived values, each over the parameters and the lets before it
    layers: tuple[LayerIR, ...]
    value_channels: dict[str, Expr]  # channels of every value ("input" and each layer's output), as expressions
    output: str
    origin: Origin
    last_norm: str | None = None  # the declared layer that ends the residual branch (zero_init_residual)
    declared: tuple[str, ...] = ()  # layer names as written, when that differs from `layers` (execution) order

    def declared_layers(self) -> list[LayerIR]:
        """The layers in the order the spec writes them: the order of the module's attributes."""
        return [self.layer(name) for name in self.declared] if self.declared else list(self.layers)

    def output_channels(self) -> Expr:
        """The block's output channels as an expression over its parameters only (lets inlined)."""
        out = self.value_channels[self.output]
        for name, value in reversed(self.lets.items()):
            out = substitute(out, {name: value})
        return out

    def channels_in(self, layer: LayerIR, position: int = 0) -> Expr:
        """Channels of a layer's input (its `position`-th), as an expression over the scope's parameters."""
        return self.value_channels[layer.inputs[position]]

    def layer(self, name: str) -> LayerIR:
        return next(layer for layer in self.layers if layer.name == name)

    @property
    def is_sequential(self) -> bool:
        """Layers named 0, 1, 2, ... each reading the previous: rendered as an nn.Sequential."""
        return all(layer.name == str(i) for i, layer in enumerate(self.layers))


@dataclass(frozen=True)
class BlockInstance:
    """One block of a stage: its type, its input channels and its full arguments."""

    block: str
    in_channels: int
    args: dict[str, int | float]


@dataclass
class Node:
    """One concrete operation. `name` is its dotted module path and the name of its output."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: dict[str, int | float | bool | str]
    shape: Shape
    params: dict[str, Shape] = field(default_factory=dict)  # learnable: weight, bias
    buffers: dict[str, Shape] = field(default_factory=dict)  # running statistics
    macs: int = 0
    shortcut: bool = False  # part of a projection shortcut: not counted in the paper's depth
    where: Location | None = None

    @property
    def param_count(self) -> int:
        return sum(prod(shape) for shape in self.params.values())


@dataclass
class Graph:
    input_shape: Shape
    nodes: list[Node]
    output: str  # the logits' value, or a backbone's last feature
    features: dict[str, str] = field(default_factory=dict)  # a backbone's outputs: feature name -> value
    zeros_at_init: tuple[str, ...] = ()  # state_dict keys that start at zero (last norms, `init_zeros`)

    @property
    def outputs(self) -> dict[str, str]:
        """Every value the model returns, by its output name."""
        return self.features or {"logits": self.output}

    def node(self, name: str) -> Node:
        return self._index()[name]

    def _index(self) -> dict[str, Node]:
        return {node.name: node for node in self.nodes}

    def shape_of(self, value: str) -> Shape:
        return self.input_shape if value == "input" else self.node(value).shape

    @property
    def output_shape(self) -> Shape:
        return self.shape_of(self.output)

    def tensors(self) -> dict[str, Shape]:
        """Every parameter and buffer, by state_dict key, in module order."""
        table: dict[str, Shape] = {}
        for node in self.nodes:
            for kind in (node.params, node.buffers):
                for key, shape in kind.items():
                    table[f"{node.name}.{key}"] = shape
        return table


@dataclass(frozen=True)
class Model:
    """Everything the backends need: the scopes to render and the concrete graph to run."""

    class_name: str
    stem: str
    file_name: str
    sha256: str
    doc: str
    input_shape: tuple[int, int, int]
    num_classes: int | None  # None for a backbone
    shortcut_option: str
    projection: str
    zero_pad: str  # option A: where the zero channels go ("end" or "split")
    zero_init_residual: bool
    paper: dict[str, object] | None  # what a paper reports for this model (the spec's `paper:`), for tables
    preprocessing: dict[str, object] | None
    body: Scope
    blocks: dict[str, Scope]  # the block types the model uses, in first-use order
    stages: dict[str, list[BlockInstance]]  # top-level stage name -> its blocks
    body_shapes: dict[str, Shape]  # output shape of every top-level layer at the spec's input size
    graph: Graph
    outputs: tuple[str, ...] = ()  # a backbone's features (top-level layer names), in the order returned
    init_zeros: tuple[str, ...] = ()  # the spec's `init_zeros`: keys that start at zero in any case

    @property
    def is_backbone(self) -> bool:
        return bool(self.outputs)

    def feature_info(self) -> list[dict[str, object]]:
        """Each feature's name, shape at the spec's input size and stride (timm's feature_info)."""
        height = self.input_shape[1]
        return [
            {"name": name, "shape": list(self.body_shapes[name]), "stride": _stride(height, self.body_shapes[name])}
            for name in self.outputs
        ]


def _stride(height: int, shape: Shape) -> int:
    return round(height / shape[1]) if len(shape) == 3 else height


def stage_block_arguments(layer: LayerIR, block: Scope, index: int) -> dict[str, Expr]:
    """The integer arguments of block `index` of a stage inside a block, as expressions over the enclosing
    block's parameters: `args` for every block, `first` and the stage's stride for the first."""
    given: dict[str, Expr] = {key: value for key, value in layer.args.items() if not isinstance(value, float)}
    if index == 0:
        given |= {key: Const(value) for key, value in layer.first.items() if isinstance(value, int)}
    if "stride" in block.params:
        given["stride"] = layer.attrs["stride"] if index == 0 else Const(1)  # type: ignore[assignment]
    return given


def integer_defaults(block: Scope) -> dict[str, Expr]:
    return {name: Const(value) for name, value in block.params.items() if isinstance(value, int)}
