"""What an op is: the one definition that validation, lowering, analysis, weights and both backends read.

An `Op` subclass holds everything about one primitive: its spec fields (a pydantic model), where it
may stand, its channel and shape rule with parameters, buffers and MACs, its seeded initialisation,
its PyTorch emission (module and call, in place or not, aliasing or not) and its ONNX emission per
opset. `resnetc.ops.registry` collects them; nothing else keeps a list of op names.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from resnetc.core.dims import Size, unknown
from resnetc.core.errors import SpecError
from resnetc.core.expr import Expr
from resnetc.core.lazy import lazy_import
from resnetc.ops.fields import StrictModel, expression_fields, rate_fields

if TYPE_CHECKING:
    import numpy as np

    from resnetc.core.ir import LayerIR, Node
else:
    np = lazy_import("numpy")  # not imported by commands that make no arrays (`check`)

Shape = tuple[int, ...]  # one sample's shape: (C, H, W) or (features,); the batch is implicit
Attrs = dict[str, Any]  # evaluated attributes: ints, floats, bools, strings, None for "default"

TOP, BLOCK, SEQUENTIAL = "top", "block", "sequential"
EVERYWHERE = frozenset({TOP, BLOCK, SEQUENTIAL})
PLACES = {TOP: "at the top level of a spec", BLOCK: "inside a block", SEQUENTIAL: "inside a numbered block"}


class Expansion(enum.Enum):
    """What lowering makes of a layer, declared by its op: every layer reads this, none compares op names."""

    NODE = "node"  # one node of the graph: every primitive
    BLOCKS = "blocks"  # `repeat` instances of a block in an nn.Sequential (a stage)
    INSTANCE = "instance"  # one named instance of a block (a submodule)
    RESIDUAL = "residual"  # the residual path: identity, or the spec's reshaping (zero padding or a projection)


class ShapeError(ValueError):
    """A layer's settings do not fit its inputs. `key` is the spec key to blame, `code` the diagnostic code."""

    def __init__(self, message: str, key: str | None = None, code: str = "E401") -> None:
        super().__init__(message)
        self.key = key
        self.code = code


@dataclass
class Inferred:
    """What a shape rule finds for one concrete layer. `resolved` fills in defaults (padding, stride)
    and derived facts (input channels) on top of the layer's own attributes."""

    shape: Shape
    resolved: Attrs = field(default_factory=dict)
    params: dict[str, Shape] = field(default_factory=dict)  # learnable: weight, bias
    buffers: dict[str, Shape] = field(default_factory=dict)  # running statistics
    macs: int = 0


@dataclass(frozen=True)
class TorchHelper:
    """A small class of the generated module: its docstring, `__init__` signature and body, `forward` body."""

    name: str
    doc: str
    signature: str
    init: tuple[str, ...]
    forward: tuple[str, ...]
    base: str = "nn.Module"


Dim = int | str  # one dimension of an ONNX tensor: a size, or a symbol (`N`, `H_2`) or a product or sum of them


class OnnxGraph(Protocol):
    """What an op's ONNX emitter may do: add nodes and constants to the graph being built, declaring the shape
    of every tensor it makes. The op's output is declared already (its shape rule, `infer`); every other tensor
    an emitter makes gets its shape where it is made: `node(..., shape=...)` in terms of `dims` of the tensors
    it is computed from, while `constant`, `scalar`, `tensor` and `shape_of` know their own. A node whose output
    has no shape is refused: no tensor is left for a reader to infer."""

    opset: int

    def dims(self, value: str) -> list[Dim]:
        """The declared dimensions of a tensor already in the graph (the batch first): `['N', 64, 'H_2', 'W_2']`,
        or numbers only in a static-shape graph."""
        ...

    def node(
        self,
        op_type: str,
        inputs: list[str],
        outputs: list[str],
        name: str,
        *,
        shape: Sequence[Dim] | None = None,
        **attributes: Any,
    ) -> None:
        """A node; `shape`: its output's dimensions, in the graph's float type (None: the op's own output)."""
        ...

    def constant(self, name: str, values: list[int]) -> str: ...

    def scalar(self, name: str, value: float) -> str: ...

    def tensor(self, name: str, values: np.ndarray) -> str: ...

    def shape_of(self, value: str, name: str) -> str:
        """The int64 shape of `value` (for a reshape back to it): a `Shape` node called `name`, or the one already
        made for a tensor of the same declared dimensions, or a constant where they are all numbers."""
        ...

    def parameter(self, key: str, dims: Sequence[int]) -> str:
        """The state_dict weight `key`, its initializer laid out as `dims` (same values in the same order): a
        per-channel (C,) parameter stored as (C, 1, 1) broadcasts over a map with no node to reshape it."""
        ...

    def same(self, output: str, value: str) -> None:
        """The op's `output` is `value` itself at inference (a dropout, a stride-1 blur): no node is written and
        later nodes read `value`, unless `output` is a graph output (then an `Identity` names it)."""
        ...


def product(*dims: Dim) -> Dim:
    """The size of several dimensions taken as one (what a reshape's -1 makes of them): a number where they are
    all numbers, else the numbers' product and the symbols joined by `*` (`16*H_4*W_4`), so that one product of
    the same dimensions always has one name."""
    number = math.prod(dim for dim in dims if isinstance(dim, int))
    symbols = [dim if "+" not in dim else f"({dim})" for dim in dims if isinstance(dim, str)]
    if not symbols:
        return number
    return "*".join([*([str(number)] if number != 1 else []), *symbols])


def plus(dim: Dim, amount: int) -> Dim:
    """A dimension grown by `amount` (padding): a number, or the symbol and the amount (`H_2+2`)."""
    if isinstance(dim, int):
        return dim + amount
    return dim if amount == 0 else f"{dim}{amount:+d}"


class _Tensor:
    """A tensor argument of a traced call, as `Op.from_torch_call` sees it."""

    def __repr__(self) -> str:
        return "TENSOR"


TENSOR = _Tensor()


@dataclass
class OnnxCall:
    """One ONNX node as `Op.from_onnx` sees it: its attributes, its inputs (a constant's array, `TENSOR` for a
    value computed at run time, None for an omitted optional input) and their shapes and the output's, each
    without the batch dimension."""

    op_type: str
    attrs: dict[str, Any]
    inputs: list[Any]
    shapes: list[tuple[int, ...] | None]
    output: tuple[int, ...]

    def tensors(self) -> int:
        return sum(1 for value in self.inputs if value is TENSOR)

    def constant(self, index: int) -> np.ndarray | None:
        value = self.inputs[index] if index < len(self.inputs) else None
        return value if isinstance(value, np.ndarray) else None


@dataclass
class FromOnnx:
    """What one ONNX node is in a spec: the op's fields (non-default ones) and its weights under the keys of its
    state_dict (`weight`, `running_mean`), as the generated module names them."""

    fields: dict[str, Any]
    weights: dict[str, np.ndarray] = field(default_factory=dict)


def onnx_window(node: OnnxCall, kernel: int | None = None) -> tuple[int, int, int, int] | None:
    """A convolution's or pool's (kernel, stride, padding, dilation) where each is one number for both
    directions and both sides, as the spec writes them; None where the node's window is not square."""
    if node.attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    shape = [int(v) for v in node.attrs.get("kernel_shape", [kernel, kernel])]
    strides = [int(v) for v in node.attrs.get("strides", [1, 1])]
    pads = [int(v) for v in node.attrs.get("pads", [0, 0, 0, 0])]
    dilations = [int(v) for v in node.attrs.get("dilations", [1, 1])]
    if len(shape) != 2 or len(set(shape)) != 1 or shape[0] is None or len(set(strides)) != 1:
        return None
    if len(pads) != 4 or len(set(pads)) != 1 or len(set(dilations)) != 1:
        return None
    return shape[0], strides[0], pads[0], dilations[0]


def onnx_float(value: float) -> float:
    """A float attribute as the exporter meant it: ONNX stores float32 (1e-5 arrives as 9.99999974e-06)."""
    return float(str(np.float32(value)))


def square(value: Any) -> int | None:
    """A torch module's size setting as one int, where it is square (`3` or `(3, 3)`); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1] and isinstance(value[0], int):
        return int(value[0])
    return None


class Op:
    """One primitive op. Subclasses set the class attributes they need and override the rules."""

    fields: ClassVar[type[StrictModel] | None] = None  # the spec's keys, types and defaults; None: internal op
    internal_name: ClassVar[str] = ""  # the name of an op that specs cannot write (made by lowering)
    doc: ClassVar[str] = ""  # one line, for the README table and the schema
    placement: ClassVar[frozenset[str]] = EVERYWHERE
    placement_rule: ClassVar[str] = ""  # why it stands only where it may, for the error message
    arity: ClassVar[int | None] = 1  # how many inputs; None: two or more
    expansion: ClassVar[Expansion] = Expansion.NODE  # what lowering makes of it (structural ops expand)
    # How the op counts: a weighted layer on the main path (He et al.'s depth), a convolution, a norm
    # that ends a residual branch (zero_init_residual zeroes its weight).
    counts_as_layer: ClassVar[bool] = False
    has_weights: ClassVar[bool] = False  # parameters or buffers in the state_dict
    is_convolution: ClassVar[bool] = False
    is_norm: ClassVar[bool] = False
    folds_into_convolution: ClassVar[bool] = False  # an affine map of its input in eval mode (BatchNorm)
    # The op it is in an inference graph once `inference_weights` has computed its weights at compile time (a
    # weight-standardised convolution is a plain `conv` of its standardised weight); None: it stays itself.
    inference_op: ClassVar[str | None] = None
    padding_op: ClassVar[str | None] = None  # a residual path: the op that option A's zero padding lowers to
    # PyTorch emission.
    torch_member: ClassVar[bool] = True  # a module attribute (as torchvision has it); False: a call in forward
    aliases_input: ClassVar[bool] = False  # the output may be the input tensor itself (a view, identity)
    saves_output: ClassVar[bool] = False  # autograd keeps the output for backward: it must not be overwritten
    torch_init: ClassVar[tuple[str, tuple[str, ...]] | None] = None  # (module class, init lines) for init_weights
    torch_helper_name: ClassVar[str | None] = None  # a class the generated module defines for this op
    # A small valid use of the op, for the registry test (merged into `{op: name}`).
    example: ClassVar[dict[str, Any]] = {}
    example_before: ClassVar[tuple[dict[str, Any], ...]] = ()  # layers the example needs just before it
    example_logits: ClassVar[bool] = False  # its last input is one logit per branch and channel (n*C, 1, 1)
    input_rank: ClassVar[int] = 3  # the rank of the input the example needs: 3 (C, H, W) or 1 (features)
    # What `resnetc import` recognises the op from (the importer compares no op names): the exact classes of
    # torch modules (`module.qualname`, subclasses are not matched: they may compute something else), and the
    # functions and tensor methods of a traced forward (`_operator.add`, `torch.flatten`, `Tensor.add`).
    torch_classes: ClassVar[tuple[str, ...]] = ()
    # Composite classes among `torch_classes` that compute the op and then apply children of their own, by
    # attribute, in order (timm's norm-act modules: the norm, then `drop` and `act`); the importer recognises
    # each child on its own (a ReLU, an identity) as the next layer.
    torch_then: ClassVar[dict[str, tuple[str, ...]]] = {}
    torch_functions: ClassVar[tuple[str, ...]] = ()
    # Functions that split a tensor into parts (`torch.split`): a traced call of one is not a layer, each part
    # read from its result is one, whose fields `from_torch_part` gives.
    torch_splits: ClassVar[tuple[str, ...]] = ()
    residual_sum: ClassVar[bool] = False  # a residual connection ends in it: the importer finds shortcuts at its inputs
    # ... and the ONNX nodes it is read back from (`resnetc import FILE.onnx`): one node of these op types, whose
    # attributes, constant inputs and shapes `from_onnx` reads.
    onnx_types: ClassVar[tuple[str, ...]] = ()

    @property
    def name(self) -> str:
        if self.fields is None:
            return self.internal_name
        return self.fields.model_fields["op"].annotation.__args__[0]  # type: ignore[union-attr]

    @property
    def structural(self) -> bool:
        """Expanded by lowering (a stage, a submodule, a shortcut), not one graph node."""
        return self.expansion is not Expansion.NODE

    @property
    def instantiates_block(self) -> bool:
        """Expands into instances of a block (a stage, a submodule)."""
        return self.expansion in (Expansion.BLOCKS, Expansion.INSTANCE)

    @property
    def expression_fields(self) -> tuple[str, ...]:
        return expression_fields(self.fields) if self.fields is not None else ()

    @property
    def rate_fields(self) -> tuple[str, ...]:
        return rate_fields(self.fields) if self.fields is not None else ()

    @property
    def wiring_fields(self) -> tuple[str, ...]:
        """Fields that say where inputs come from or what to expand, not how to compute: not attributes."""
        return ("op", "from_", "module")

    @property
    def parameter_free(self) -> bool:
        """Whether the op never has weights (so one module of it may be applied at several places)."""
        return not self.has_weights

    # ---- spec and shapes -------------------------------------------------------------------------

    def keys(self) -> list[tuple[str, object]]:
        """The op's own spec keys with their defaults (`...` for required), for documentation. `from` is
        listed where it has a default of its own (the shortcut's `input`); `module` is common to all."""
        if self.fields is None:
            return []
        listed = []
        for key, info in self.fields.model_fields.items():
            required = info.is_required()
            default = ... if required else info.get_default(call_default_factory=True)
            if key in ("op", "module") or (key == "from_" and (required or default is None)):
                continue
            listed.append((info.alias or key, default))
        return listed

    def defaults(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """The attributes with every derived default filled in (a convolution's 'same' padding, a pool's stride).
        The one place each rule is written: it reads numbers (lowering) or expressions (the PyTorch backend)."""
        return attrs

    def channels(self, attrs: dict[str, Any], inputs: list[Expr]) -> Expr:
        """The output's channels as an expression over the block's parameters (attributes unevaluated)."""
        return inputs[0]

    def infer(self, attrs: Attrs, shapes: list[Shape]) -> Inferred:
        """Output shape, resolved attributes, parameter and buffer shapes, MACs; ShapeError if they do not fit."""
        return Inferred(shapes[0])

    def initial(self, key: str, shape: Shape, params: dict[str, Shape], rng: np.random.Generator) -> np.ndarray:
        """Seeded initial value of one parameter or buffer (only ops with weights are asked)."""
        return np.zeros(shape, np.float32)

    # ---- PyTorch ---------------------------------------------------------------------------------

    def returns_input(self, attrs: dict[str, Any]) -> bool:
        """Whether the output may be the input tensor itself (a view, an identity, an op that is the identity at
        some settings). Attributes may be expressions: where the answer depends on one, it is True."""
        return self.aliases_input

    def in_place(self, attrs: dict[str, Any]) -> bool:
        """Whether the op can overwrite its input (where the IR's alias analysis says it may)."""
        return False

    def torch_module(self, layer: LayerIR, channels: Expr, inplace: bool) -> str | None:
        """Source of the nn.Module that computes the op (`nn.ReLU(inplace=True)`), or None if it has none."""
        return None

    def torch_call(self, layer: LayerIR, args: list[str]) -> str | None:
        """Source of the expression that computes the op in `forward` when it is not a module."""
        return None

    def torch_helper(self) -> TorchHelper | None:
        """The class (named `torch_helper_name`) that the generated module defines when torch has no module
        for the op: the generated code imports only torch."""
        return None

    # ---- import (`resnetc import`) ---------------------------------------------------------------

    def from_torch(self, module: Any) -> dict[str, Any] | None:
        """The spec fields (non-default ones only) of a torch module of one of `torch_classes`, or None where
        its settings are not this op's (read by attribute: the ops never import torch)."""
        return {}

    def from_torch_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
        """The spec fields of a call of one of `torch_functions` (tensor arguments appear as `TENSOR`), or None
        where its arguments are not this op's."""
        return {} if not kwargs and all(arg is TENSOR for arg in args) else None

    def from_torch_part(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], index: int, shape: Shape
    ) -> dict[str, Any] | None:
        """The spec fields of part `index` of a call of one of `torch_splits` whose tensor argument has `shape`
        (one sample's), or None where the call is not this op's."""
        return None

    def from_onnx(self, node: OnnxCall) -> FromOnnx | None:
        """The spec fields and weights of one ONNX node of `onnx_types`, or None where it is not this op's
        (by default: an op without settings or weights, whose inputs are all run-time tensors)."""
        simple = not node.attrs and node.tensors() == len(node.inputs) == (self.arity or len(node.inputs))
        return FromOnnx({}) if simple else None

    def identity_at(self, attrs: dict[str, Any]) -> bool:
        """Whether the op computes its input itself at these settings, in training too (an identity, a drop
        rate of 0): the importer may leave such a layer out, or match a library layer to nothing."""
        return False

    # ---- ONNX ------------------------------------------------------------------------------------

    def onnx(self, node: Node, inputs: list[str], output: str, graph: OnnxGraph) -> bool:
        """Add the op's ONNX nodes; False when this opset cannot express it."""
        return False


def unsupported(backend: str, op: str, node_name: str, where: Any, detail: str = "") -> SpecError:
    """The error a backend gives for an op it cannot express: backend, op and spec location named."""
    extra = f" ({detail})" if detail else ""
    return SpecError.at(where, f"the {backend} backend cannot express op '{op}' (layer {node_name}){extra}", "E406")


# ---- helpers shared by the shape rules ---------------------------------------------------------------


def image(shapes: list[Shape], op: str) -> tuple[int, int, int]:
    if len(shapes[0]) != 3:
        raise ShapeError(f"{op} needs a (channels, height, width) input, got shape {shapes[0]}", "from")
    channels, height, width = shapes[0]
    return channels, height, width


def positive(attrs: Attrs, *keys: str) -> None:
    for key in keys:
        if attrs[key] is None or attrs[key] < 1:
            raise ShapeError(f"{key} must be at least 1, got {attrs[key]}", key)


def window(size: int, kernel: int, stride: int, padding: int, dilation: int, what: str, ceil_mode: bool = False) -> int:
    """Output size of a sliding window, PyTorch's rule (with ceil_mode, a last window must start inside
    the input or its left padding). A symbolic `Size` in gives one out, with its form where it has one."""
    span = int(size) + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1 if span >= 0 else 0
    if ceil_mode and out > 0 and (out - 1) * stride >= int(size) + padding:
        out -= 1
    if out < 1:
        raise ShapeError(
            f"spatial size reaches zero: {what} of kernel {kernel} (dilation {dilation}, padding {padding}) "
            f"does not fit an input of size {size}",
            "kernel",
            "E403",
        )
    if not isinstance(size, Size):
        return out
    extent = dilation * (kernel - 1) + 1
    symbolic = size + 2 * padding - extent
    if not ceil_mode:
        return (symbolic // stride + 1).with_value(out)  # type: ignore[union-attr]
    # The last window is dropped where it would start in the right padding: (-span mod stride) >= extent - padding.
    reach = extent - padding
    if reach <= 0:  # always dropped
        return (-(-symbolic // stride)).with_value(out)  # type: ignore[union-attr]
    if reach >= stride:  # never dropped
        return (-(-symbolic // stride) + 1).with_value(out)  # type: ignore[union-attr]
    return unknown(out, size)  # dropped at some sizes only: depends on the size modulo the stride
