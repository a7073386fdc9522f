"""Which layers may overwrite their input: a liveness and alias analysis of one scope.

PyTorch runs an op in place (`nn.ReLU(inplace=True)`) by overwriting its input's storage. That is
safe only when nothing else will read that storage, under any name: an identity shortcut, a
dropout in eval mode, a flatten view, a blur pool at stride 1 or a block whose output is its input all
hand on the *same* tensor (each op says so: `Op.returns_input`). So values are grouped by storage
(a class per tensor actually allocated), and an op may overwrite its input only when
- the class is not the scope's input (the caller's tensor, which the caller may still read),
- no other layer reads the class, before or after, and the scope does not return it (a backbone returns
  several values),
- and autograd did not keep the class for backward (ReLU and sigmoid keep their outputs; an op that
  ran in place keeps its result).
The ONNX graph never aliases, so a wrong answer here is what made the backends disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

from resnetc import ops
from resnetc.core.ir import Scope

INPUT = "input"


@dataclass(frozen=True)
class Aliasing:
    storage: dict[str, str]  # value -> the value whose storage it is ("input" for the caller's tensor)
    in_place: frozenset[str]  # layers that may overwrite their input
    kept: frozenset[str]  # storage that autograd keeps for backward

    def aliases_input(self, value: str) -> bool:
        return self.storage[value] == INPUT

    def is_kept(self, value: str) -> bool:
        return self.storage[value] in self.kept


def analyse(scope: Scope, blocks: dict[str, Scope], returned: tuple[str, ...] = ()) -> Aliasing:
    """Storage classes and in-place decisions of `scope` (`blocks`: the block types its stages use). `returned`:
    the values the scope returns besides its output (a backbone's features), each read once more at the end."""
    storage: dict[str, str] = {INPUT: INPUT}
    kept: set[str] = set()
    for layer in scope.layers:
        op = ops.get(layer.op)
        aliases, keeps = op.returns_input(layer.attrs), op.saves_output
        if (
            ops.get(layer.op).instantiates_block and layer.block in blocks
        ):  # a block may hand its input on, or end in a ReLU
            block = analyse(blocks[layer.block], blocks)
            aliases = block.aliases_input(blocks[layer.block].output)
            keeps = block.is_kept(blocks[layer.block].output)
        storage[layer.name] = storage[layer.inputs[0]] if aliases else layer.name
        if keeps:
            kept.add(storage[layer.name])
    # Every read of a storage class, by the index of the reading layer (reads that only alias don't count).
    reads: dict[str, list[int]] = {}
    for index, layer in enumerate(scope.layers):
        hands_on = storage[layer.name] == storage[layer.inputs[0]] and not ops.get(layer.op).instantiates_block
        # An alias hands its first input on (whoever reads the alias reads the class); a shortcut's
        # projection still reads its second input, `project_from`.
        for value in dict.fromkeys(layer.inputs[1:] if hands_on else layer.inputs):
            if index not in reads.setdefault(storage[value], []):
                reads[storage[value]].append(index)
    for value in dict.fromkeys((scope.output, *returned)):  # returned to the caller: read after every layer
        reads.setdefault(storage[value], []).append(len(scope.layers))
    in_place: set[str] = set()
    for index, layer in enumerate(scope.layers):
        op = ops.get(layer.op)
        if op.structural or not op.in_place(layer.attrs):
            continue
        target = storage[layer.inputs[0]]
        if target != INPUT and reads.get(target) == [index] and target not in kept:
            in_place.add(layer.name)
            kept |= {target, storage[layer.name]}  # the result lives in the overwritten storage
    return Aliasing(storage, frozenset(in_place), frozenset(kept))
